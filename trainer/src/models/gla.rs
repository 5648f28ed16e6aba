//! fla's `gla`: gated linear attention (`fla/layers/gla.py`, `GatedLinearAttention`), with fla's
//! parameter names.
//!
//! q, k, v are projections (each through a short convolution with SiLU when `use_short_conv`); the
//! forget gate is low-rank, `gk = logsigmoid(W₂(W₁ x) + b) / 16` (rank 16, fla's fixed
//! `gate_low_rank_dim` and `gate_logit_normalizer`), floored at `clamp_min` if set; the heads mix tokens
//! by `S_t = diag(exp(gk_t)) S_{t−1} + k_t v_tᵀ`, `o_t = S_tᵀ q_t / √dk` (chunked:
//! [`crate::kernels::gla`], or fla's kernels, [`crate::kernels::fla::gla`]); the output is
//! RMS-normalised per head (one weight over a head's values) and gated by `swish(g_proj(x))`, then
//! projected back.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::layers::{gated_head_norm, layer_short_conv, projections, short_convs};
use super::lm::{Context, Mixer};
use crate::config::{GateActivation, GlaConfig, ModelConfig};

/// fla's fixed rank of the forget gate's projection.
const GATE_RANK: i64 = 16;
/// fla's fixed divisor of the log gate.
const GATE_LOGIT_NORMALIZER: f64 = 16.0;

/// One GLA layer's parameters.
#[derive(Debug)]
pub struct Gla {
    config: GlaConfig,
    eps: f64,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Option<Tensor>,
    gk_down: Tensor,
    gk_up: Tensor,
    gk_bias: Tensor,
    o: Tensor,
    norm: Tensor,
    convs: Option<[Tensor; 3]>,
}

impl Gla {
    /// The layer of `model` under `p` (fla's `GatedLinearAttention` names), initialised as fla does:
    /// matrices and convolution taps normal with `initializer_range`, the gate's bias zero, the norm one.
    pub fn new(p: &nn::Path<'_>, model: &ModelConfig, config: &GlaConfig) -> Self {
        let std = Init::Randn {
            mean: 0.0,
            stdev: model.initializer_range,
        };
        let h = i64::from(model.hidden_size);
        let (k, v) = (i64::from(config.key_dim), i64::from(config.value_dim));
        let dv = v / i64::from(config.num_heads);
        let convs = config
            .short_conv
            .map(|taps| short_convs(p, taps, [k, k, v], std));
        let norm_name = if config.fused_gate_norm {
            "g_norm_swish_gate"
        } else {
            "g_norm"
        };
        Self {
            q: (p / "q_proj").var("weight", &[k, h], std),
            k: (p / "k_proj").var("weight", &[k, h], std),
            v: (p / "v_proj").var("weight", &[v, h], std),
            gate: config
                .use_output_gate
                .then(|| (p / "g_proj").var("weight", &[v, h], std)),
            gk_down: (p / "gk_proj" / 0).var("weight", &[GATE_RANK, h], std),
            gk_up: (p / "gk_proj" / 1).var("weight", &[k, GATE_RANK], std),
            gk_bias: (p / "gk_proj" / 1).var("bias", &[k], Init::Const(0.0)),
            o: (p / "o_proj").var("weight", &[h, v], std),
            norm: (p / norm_name).var("weight", &[dv], Init::Const(1.0)),
            convs,
            eps: model.norm_eps,
            config: config.clone(),
        }
    }
}

impl Mixer for Gla {
    #[allow(clippy::many_single_char_names)] // the usual names of the dimensions
    fn forward(&self, x: &Tensor, context: &Context<'_>) -> Tensor {
        let size = x.size();
        let (b, t) = (size[0], size[1]);
        let heads = i64::from(self.config.num_heads);
        let dk = i64::from(self.config.key_dim) / heads;
        let dv = i64::from(self.config.value_dim) / heads;
        let mut weights = vec![&self.q, &self.k, &self.v, &self.gk_down];
        weights.extend(&self.gate);
        let mut parts = projections(x, &weights).into_iter();
        let mut project = |conv: usize| {
            let y = parts.next().expect("one output per weight");
            match &self.convs {
                Some(convs) => layer_short_conv(&y, &convs[conv], context),
                None => y,
            }
        };
        let q = project(0).view([b, t, heads, dk]);
        let k = project(1).view([b, t, heads, dk]);
        let v = project(2).view([b, t, heads, dv]);
        let logits = parts
            .next()
            .expect("the gate's first projection")
            .linear(&self.gk_up, Some(&self.gk_bias));
        // fla's layer computes the gate in its projections' dtype, bf16 under autocast, and its
        // kernels take it so.
        let logits = if context.fla.is_some() {
            logits.to_kind(Kind::BFloat16)
        } else {
            logits
        };
        let mut gk = logits.log_sigmoid() / GATE_LOGIT_NORMALIZER;
        if let Some(floor) = self.config.clamp_min {
            gk = gk.clamp_min(floor);
        }
        let gk = gk.view([b, t, heads, dk]);
        #[allow(clippy::cast_precision_loss)]
        let scale = (dk as f64).powf(-0.5);
        let o = if let Some(varlen) = &context.fla {
            // MixingKernels::resolve checked the build when it chose fla's kernels.
            crate::kernels::fla::gla::chunk_gla(&q, &k, &v, &gk, scale, varlen)
                .unwrap_or_else(|e| panic!("{e}"))
        } else {
            let layout = context
                .layout
                .as_ref()
                .expect("linear mixers get a chunk layout");
            crate::kernels::gla::chunk_gla(&q, &k, &v, &gk, scale, layout)
        };
        let gate = parts.next().map(|g| g.view([b, t, heads, dv]));
        let o = gated_head_norm(
            &o,
            &self.norm,
            self.eps,
            gate.as_ref().map(|g| (g, GateActivation::Swish)),
            context.fla.is_some() && self.config.fused_gate_norm,
        );
        o.reshape([b, t, heads * dv])
            .linear(&self.o, None::<Tensor>)
    }
}
