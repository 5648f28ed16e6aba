//! fla's `delta_net` (`fla/layers/delta_net.py`, `DeltaNet`) and `gated_deltanet`
//! (`fla/layers/gated_deltanet.py`, `GatedDeltaNet`), with fla's parameter names: one mixer, the decay
//! the only difference.
//!
//! q, k, v go through short convolutions with SiLU (or SiLU alone without them); q and k are
//! L2-normalised; β = sigmoid(b_proj(x)) (doubled with `allow_neg_eigval`); Gated DeltaNet's decay is
//! Mamba2's, `g = −exp(A_log) · softplus(a_proj(x) + dt_bias)`. The heads mix tokens by
//! `S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ`, `o_t = S_tᵀ q_t / √dk` (chunked with the WY
//! representation: [`crate::kernels::delta_rule`], or on fla's own kernels where the model runs them:
//! [`crate::kernels::fla::delta_rule`], [`crate::kernels::fla::gated_delta_rule`], which take q and k
//! before their L2 norm and Gated DeltaNet's raw `a_proj(x)` and `b_proj(x)`, as fla's layers pass
//! them); the output is RMS-normalised per head, gated when the config has an output gate, and
//! projected back.

use tch::Tensor;
use tch::nn::{self, Init};

use super::layers::{gated_head_norm, l2_norm, layer_short_conv, projections, short_convs};
use super::lm::{Context, Mixer};
use crate::config::{DeltaRuleConfig, ModelConfig};
use crate::kernels::compute_kind;

/// The decay's parameters (Gated DeltaNet).
#[derive(Debug)]
struct Decay {
    a: Tensor,
    a_log: Tensor,
    dt_bias: Tensor,
}

/// One DeltaNet or Gated DeltaNet layer's parameters.
#[derive(Debug)]
pub struct DeltaRule {
    config: DeltaRuleConfig,
    eps: f64,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    b: Option<Tensor>,
    decay: Option<Decay>,
    gate: Option<Tensor>,
    o: Tensor,
    norm: Tensor,
    convs: Option<[Tensor; 3]>,
}

impl DeltaRule {
    /// The layer of `model` under `p` (fla's names), initialised as fla does: matrices and convolution
    /// taps normal with `initializer_range`, the norm one; Gated DeltaNet's `A = exp(A_log)` uniform in
    /// [0, 16] and `softplus(dt_bias)` log-uniform in [1e-3, 0.1] (floored at 1e-4).
    pub fn new(p: &nn::Path<'_>, model: &ModelConfig, config: &DeltaRuleConfig) -> Self {
        let std = Init::Randn {
            mean: 0.0,
            stdev: model.initializer_range,
        };
        let h = i64::from(model.hidden_size);
        let heads = i64::from(config.num_heads);
        let (k, v) = (
            heads * i64::from(config.head_k_dim),
            heads * i64::from(config.head_v_dim),
        );
        // fla's GatedDeltaNet creates A_log and dt_bias first: they come first in its state dict.
        let decay = config.decay.then(|| Decay {
            a_log: a_log(p, heads),
            dt_bias: dt_bias(p, heads),
            a: (p / "a_proj").var("weight", &[heads, h], std),
        });
        let convs = config
            .short_conv
            .map(|taps| short_convs(p, taps, [k, k, v], std));
        Self {
            q: (p / "q_proj").var("weight", &[k, h], std),
            k: (p / "k_proj").var("weight", &[k, h], std),
            v: (p / "v_proj").var("weight", &[v, h], std),
            b: config
                .use_beta
                .then(|| (p / "b_proj").var("weight", &[heads, h], std)),
            decay,
            gate: config
                .output_gate
                .map(|_| (p / "g_proj").var("weight", &[v, h], std)),
            o: (p / "o_proj").var("weight", &[h, v], std),
            norm: (p / "o_norm").var("weight", &[i64::from(config.head_v_dim)], Init::Const(1.0)),
            convs,
            eps: model.norm_eps,
            config: config.clone(),
        }
    }

    /// The short convolutions (with SiLU) of q's, k's and v's projections, or SiLU alone without them.
    /// Gated DeltaNet's run as one convolution over the three side by side, as fla's `GatedDeltaNet`
    /// runs them on whole sequences (`_use_fused_qkv_conv`): the convolution is depthwise, so that is
    /// the same function, in one kernel launch per pass whose width fla has tuned (a profiled H100 step
    /// of `gated_deltanet_340M` spent 77 ms in three convolutions per layer, fla 20 ms in one).
    fn convolve_qkv(&self, [q, k, v]: [Tensor; 3], context: &Context<'_>) -> [Tensor; 3] {
        let Some(convs) = &self.convs else {
            return [q.silu(), k.silu(), v.silu()];
        };
        if self.decay.is_none() {
            return [
                layer_short_conv(&q, &convs[0], context),
                layer_short_conv(&k, &convs[1], context),
                layer_short_conv(&v, &convs[2], context),
            ];
        }
        let widths = [q.size()[2], k.size()[2], v.size()[2]];
        let qkv = layer_short_conv(
            &Tensor::cat(&[q, k, v], -1),
            &Tensor::cat(convs, 0),
            context,
        );
        let mut parts = qkv.split_with_sizes(widths.as_slice(), -1).into_iter();
        [0, 1, 2].map(|_| parts.next().expect("three parts"))
    }
}

/// `A_log = log(A)`, `A` uniform in [0, 16].
fn a_log(p: &nn::Path<'_>, heads: i64) -> Tensor {
    let mut a_log = p.var("A_log", &[heads], Init::Uniform { lo: 0.0, up: 16.0 });
    tch::no_grad(|| {
        let log = a_log.log();
        a_log.copy_(&log);
    });
    a_log
}

/// `dt_bias = softplus⁻¹(dt)`, `dt` log-uniform in [1e-3, 0.1], floored at 1e-4.
fn dt_bias(p: &nn::Path<'_>, heads: i64) -> Tensor {
    let (low, high) = (1e-3f64.ln(), 0.1f64.ln());
    let mut dt_bias = p.var("dt_bias", &[heads], Init::Uniform { lo: 0.0, up: 1.0 });
    tch::no_grad(|| {
        let dt = (&dt_bias * (high - low) + low).exp().clamp_min(1e-4);
        // softplus⁻¹(dt) = dt + log(−expm1(−dt)).
        let inverse = &dt + (-(-&dt).expm1()).log();
        dt_bias.copy_(&inverse);
    });
    dt_bias
}

impl Mixer for DeltaRule {
    #[allow(clippy::many_single_char_names)] // the usual names of the dimensions
    fn forward(&self, x: &Tensor, context: &Context<'_>) -> Tensor {
        let size = x.size();
        let (batch, t) = (size[0], size[1]);
        let heads = i64::from(self.config.num_heads);
        let (dk, dv) = (
            i64::from(self.config.head_k_dim),
            i64::from(self.config.head_v_dim),
        );
        let mut weights = vec![&self.q, &self.k, &self.v];
        weights.extend(&self.b);
        weights.extend(self.decay.as_ref().map(|d| &d.a));
        weights.extend(&self.gate);
        let mut parts = projections(x, &weights).into_iter();
        let mut next = || parts.next().expect("one output per weight");
        let [q, k, v] = self.convolve_qkv([next(), next(), next()], context);
        let q = q.view([batch, t, heads, dk]);
        let k = k.view([batch, t, heads, dk]);
        let v = v.view([batch, t, heads, dv]);
        let b = self
            .b
            .as_ref()
            .map(|_| parts.next().expect("b_proj's output"));
        let a = self
            .decay
            .as_ref()
            .map(|_| parts.next().expect("a_proj's output"));
        let gate = parts.next().map(|g| g.view([batch, t, heads, dv]));
        let beta = || match &b {
            Some(b) => {
                let beta = b.to_kind(compute_kind(x.kind())).sigmoid();
                if self.config.allow_neg_eigval {
                    beta * 2.0
                } else {
                    beta
                }
            }
            None => Tensor::ones([batch, t, heads], (compute_kind(x.kind()), x.device())),
        };
        #[allow(clippy::cast_precision_loss)]
        let scale = (dk as f64).powf(-0.5);
        // MixingKernels::resolve checked the build (and Gated DeltaNet's b_proj) when it chose fla's
        // kernels.
        let o = match (&context.fla, &self.decay, &a, &b) {
            (Some(varlen), Some(d), Some(a), Some(b)) => {
                crate::kernels::fla::gated_delta_rule::chunk_gated_delta_rule(
                    &q,
                    &k,
                    &v,
                    a,
                    b,
                    &d.a_log,
                    &d.dt_bias,
                    scale,
                    self.config.allow_neg_eigval,
                    varlen,
                )
                .unwrap_or_else(|e| panic!("{e}"))
            }
            (Some(varlen), None, _, _) => crate::kernels::fla::delta_rule::chunk_delta_rule(
                &q,
                &k,
                &v,
                &beta(),
                scale,
                varlen,
            )
            .unwrap_or_else(|e| panic!("{e}")),
            _ => {
                let layout = context
                    .layout
                    .as_ref()
                    .expect("linear mixers get a chunk layout");
                let g = self.decay.as_ref().zip(a.as_ref()).map(|(d, a)| {
                    -d.a_log.exp() * (a.to_kind(compute_kind(x.kind())) + &d.dt_bias).softplus()
                });
                crate::kernels::delta_rule::chunk_delta_rule(
                    &l2_norm(&q),
                    &l2_norm(&k),
                    &v,
                    &beta().to_kind(v.kind()),
                    g.as_ref().map(|g| g.to_kind(v.kind())).as_ref(),
                    scale,
                    layout,
                )
            }
        };
        let o = gated_head_norm(
            &o,
            &self.norm,
            self.eps,
            gate.as_ref().zip(self.config.output_gate),
            context.fla.is_some(),
        );
        o.reshape([batch, t, heads * dv])
            .linear(&self.o, None::<Tensor>)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use tch::{Device, Kind, Tensor, nn};

    use super::*;
    use crate::config::Mixer as MixerConfig;
    use crate::models::Inputs;

    /// Gated DeltaNet's q, k and v convolved side by side give what each convolved alone gives, values
    /// and gradients (float64, three documents in two samples: the convolutions restart at each).
    #[test]
    fn side_by_side_convolutions_are_the_separate_ones() {
        let config = ModelConfig::from_json(
            r#"{"model_type": "gated_deltanet", "hidden_size": 32, "num_hidden_layers": 1,
                "num_heads": 2, "head_dim": 8, "vocab_size": 64}"#,
        )
        .unwrap();
        let MixerConfig::DeltaRule(delta) = &config.mixer else {
            panic!("a delta rule")
        };
        let mut vs = nn::VarStore::new(Device::Cpu);
        let layer = DeltaRule::new(&vs.root(), &config, delta);
        vs.double();
        assert!(layer.decay.is_some(), "Gated DeltaNet has the decay");
        let inputs = Inputs::new(&[1; 24], 12, &[vec![0, 5, 12], vec![0, 12]], Device::Cpu);
        let context = Context {
            inputs: &inputs,
            rope: None,
            layout: None,
            fla: None,
        };
        let opts = (Kind::Double, Device::Cpu);
        let qkv: Vec<Tensor> = [16, 16, 32]
            .iter()
            .map(|&d| Tensor::randn([2, 12, d], opts).set_requires_grad(true))
            .collect();
        let fused = layer.convolve_qkv([0, 1, 2].map(|i| qkv[i].shallow_clone()), &context);
        let convs = layer.convs.as_ref().unwrap();
        let alone: Vec<Tensor> = (0..3)
            .map(|i| layer_short_conv(&qkv[i], &convs[i], &context))
            .collect();
        let mut leaves: Vec<&Tensor> = qkv.iter().collect();
        leaves.extend(convs.iter());
        let grads = |ys: &[Tensor]| {
            let loss = ys
                .iter()
                .zip([1.0, 2.0, 3.0])
                .map(|(y, weight)| (y * weight).sin().sum(Kind::Double))
                .fold(Tensor::zeros([], opts), |a, b| a + b);
            Tensor::run_backward(&[loss], &leaves, false, false)
        };
        for (a, b) in fused.iter().zip(&alone) {
            assert_eq!(a.size(), b.size());
            assert!(a.allclose(b, 1e-12, 1e-12, false));
        }
        for (a, b) in grads(&fused).iter().zip(&grads(&alone)) {
            assert!(a.allclose(b, 1e-12, 1e-12, false));
        }
    }
}
