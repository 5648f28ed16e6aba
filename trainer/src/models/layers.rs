//! Layers the architectures share: RMSNorm and LayerNorm, rotary embeddings, causal softmax attention,
//! the SwiGLU and GELU MLPs, and the chunked output layer with its cross-entropy.

use tch::nn::{self, Init};
use tch::{Kind, Reduction, Tensor};

use super::inputs::{IGNORE, Inputs};
use super::lm::Context;
use crate::config::{GateActivation, Gelu};
use crate::kernels::compute_kind;

/// RMSNorm computed in float32 and returned in `x`'s dtype, times `weight` (Hugging Face Llama's).
/// On CUDA with `x` and `weight` of one dtype (the fp32 residual stream under autocast), libtorch's
/// fused kernel each way (`at::rms_norm`, `_fused_rms_norm`): the same function in one pass.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    if x.device().is_cuda() && x.kind() == weight.kind() && x.kind() == compute_kind(x.kind()) {
        return x.rms_norm(weight.size().as_slice(), Some(weight), eps);
    }
    let kind = compute_kind(x.kind());
    let xf = x.to_kind(kind);
    let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, kind);
    (xf * (variance + eps).rsqrt()).to_kind(x.kind()) * weight
}

/// LayerNorm with weight and bias (GPT-2's), computed in float32 under autocast (libtorch's autocast
/// runs `layer_norm` in float32) and on the CPU in `x`'s dtype.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Tensor {
    x.layer_norm(
        weight.size().as_slice(),
        Some(weight),
        Some(bias),
        eps,
        true,
    )
}

/// Causal softmax attention, scores scaled by `1/√d`: queries `[B, heads, T, d]`, keys and values
/// `[B, kv heads, T, d]` (grouped-query attention where fewer), within each document of `inputs`; the
/// heads' outputs side by side, `[B, T, heads·d]`. Flash attention over the documents on CUDA
/// (`inputs.packed`), else libtorch's attention with the batch's block-diagonal causal mask.
#[allow(clippy::many_single_char_names)] // the usual names of the dimensions
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, inputs: &Inputs) -> Tensor {
    let (size, nkv) = (q.size(), k.size()[1]);
    let (b, nh, t, d) = (size[0], size[1], size[2], size[3]);
    if let Some((cu, longest)) = &inputs.packed {
        // Flash attention over the documents: [B·T, heads, d], kv heads as they are (GQA).
        let flat = |x: &Tensor, heads: i64| x.transpose(1, 2).reshape([b * t, heads, d]);
        return crate::shim::flash_varlen(&flat(q, nh), &flat(k, nkv), &flat(v, nkv), cu, *longest)
            .expect("flash attention")
            .reshape([b, t, nh * d]);
    }
    let (k, v) = if nkv == nh {
        (k.shallow_clone(), v.shallow_clone())
    } else {
        (
            k.repeat_interleave_self_int(nh / nkv, 1, None),
            v.repeat_interleave_self_int(nh / nkv, 1, None),
        )
    };
    Tensor::scaled_dot_product_attention(
        q,
        &k,
        &v,
        inputs.mask.as_ref(),
        0.0,
        inputs.mask.is_none(),
        None,
        false,
    )
    .transpose(1, 2)
    .reshape([b, t, nh * d])
}

/// Rotary position embedding, rotate-half form: the inverse frequencies of one head's pairs.
pub struct Rotary {
    inv_freq: Tensor,
}

impl std::fmt::Debug for Rotary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotary").finish_non_exhaustive()
    }
}

impl Rotary {
    /// `1 / theta^(2i/d)` in float32, as Hugging Face computes it, for heads of width `head_dim`.
    pub fn new(head_dim: i64, theta: f64, device: tch::Device) -> Self {
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let (d_float, theta) = (head_dim as f64, theta as f32);
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, device)) / d_float;
        let inv_freq = Tensor::from(theta)
            .to_device(device)
            .pow(&exponents)
            .reciprocal();
        Self { inv_freq }
    }

    /// Cosines and sines `[B, 1, T, head_dim]` at `positions` (`[B, T]`).
    pub fn tables(&self, positions: &Tensor) -> (Tensor, Tensor) {
        // The frequencies follow the positions' device (a model moved after it was built).
        let inv_freq = self.inv_freq.to_device(positions.device());
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq;
        let angles = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (angles.cos(), angles.sin())
    }
}

/// `x` (`[B, heads, T, d]`) rotated by the tables of [`Rotary::tables`].
pub fn apply_rotary(x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Tensor {
    x * &cos.to_kind(x.kind()) + rotate_half(x) * &sin.to_kind(x.kind())
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1)
}

/// The SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
pub fn swiglu(x: &Tensor, gate: &Tensor, up: &Tensor, down: &Tensor) -> Tensor {
    (x.linear(gate, None::<Tensor>).silu() * x.linear(up, None::<Tensor>))
        .linear(down, None::<Tensor>)
}

/// GPT-2's MLP: `c_proj(gelu(c_fc(x)))`, each a `Conv1D` (weight `[in, out]`, bias `[out]`).
pub fn gelu_mlp(
    x: &Tensor,
    fc: (&Tensor, &Tensor),
    proj: (&Tensor, &Tensor),
    gelu: Gelu,
) -> Tensor {
    conv1d(
        &conv1d(x, fc.0, fc.1).gelu(gelu.approximate()),
        proj.0,
        proj.1,
    )
}

/// `transformers`' `Conv1D`: `x · weight + bias` with `weight` stored `[in, out]`, as a `linear` (so
/// that autocast casts the bias with the weight).
pub fn conv1d(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Tensor {
    x.linear(&weight.tr(), Some(bias))
}

/// `x` through the bias-free projections `weights` (`[out_i, in]` each) as matmuls on stacked weights,
/// their outputs split back into `[…, out_i]` views in the order of `weights`. Under autocast `x` is cast
/// to bf16 once, not once per projection as separate `linear`s do, and its gradient is a sum of one or two
/// matmuls' rather than a float32 sum of one per projection: the values are the separate projections' up to
/// the order of the matmul's sums. The projections whose widths are multiples of 8 are stacked apart from
/// the others (Gated DeltaNet's one-per-head β and `a`): a stacked width that is not a multiple of 8 leaves
/// the bf16 rows unaligned for cuBLAS's Hopper kernels, and its three matmuls per layer then ran on
/// Ampere's, at about half the speed (a profiled H100 step of `gated_deltanet_340M`: 74 ms of its 334).
pub fn projections(x: &Tensor, weights: &[&Tensor]) -> Vec<Tensor> {
    let mut outputs: Vec<Option<Tensor>> = weights.iter().map(|_| None).collect();
    for aligned in [true, false] {
        let group: Vec<usize> = (0..weights.len())
            .filter(|&i| (weights[i].size()[0] % 8 == 0) == aligned)
            .collect();
        let parts = match group.as_slice() {
            [] => continue,
            &[i] => vec![x.linear(weights[i], None::<Tensor>)],
            _ => {
                let stacked: Vec<&Tensor> = group.iter().map(|&i| weights[i]).collect();
                let sizes: Vec<i64> = stacked.iter().map(|w| w.size()[0]).collect();
                x.linear(&Tensor::cat(&stacked, 0), None::<Tensor>)
                    .split_with_sizes(sizes.as_slice(), -1)
            }
        };
        for (i, part) in group.into_iter().zip(parts) {
            outputs[i] = Some(part);
        }
    }
    outputs
        .into_iter()
        .map(|o| o.expect("every projection is in a group"))
        .collect()
}

/// The output layer and next-token cross-entropy over `hidden` (`[B, T, h]`, the final normalised
/// states; the positions that have a label, as many as `labels` has columns), `rows` label positions at a time, each chunk's logits freed after its backward (a fused
/// linear cross-entropy), so that `[tokens, vocab]` logits never exist whole; then the backward pass on
/// from `hidden`. Accumulates the gradients of `scale ×` the mean loss over the labels that are not
/// [`IGNORE`] and returns that loss (unscaled, detached). With `fla` and bf16 logits (autocast) each
/// chunk's loss runs on fla's fused kernels ([`crate::kernels::fla::cross_entropy`]: the logits'
/// gradient written over them), else on libtorch's `cross_entropy` (in float32 under autocast).
///
/// # Errors
/// When fla's loss or the backward pass from `hidden` fails.
pub fn chunked_head_backward(
    hidden: &Tensor,
    head: &Tensor,
    labels: &Tensor,
    scale: f64,
    rows_per_chunk: i64,
    fla: bool,
) -> Result<Tensor, String> {
    let size = hidden.size();
    let (b, h) = (size[0], size[2]);
    // Positions with a label: all but the last, or all of them for Megatron's samples.
    let labelled = labels.size()[1];
    let before_last = hidden.narrow(1, 0, labelled);
    let flat = before_last
        .reshape([-1, h])
        .detach()
        .set_requires_grad(true);
    let labels = labels.reshape([-1]);
    let count = labels
        .ne(IGNORE)
        .sum(Kind::Float)
        .clamp_min(1.0)
        .reciprocal();
    let rows = flat.size()[0];
    let mut total = Tensor::zeros([], (Kind::Float, hidden.device()));
    let mut start = 0;
    while start < rows {
        let n = rows_per_chunk.min(rows - start);
        let logits = flat.narrow(0, start, n).linear(head, None::<Tensor>);
        let chunk_labels = labels.narrow(0, start, n);
        let loss = if fla && logits.kind() == Kind::BFloat16 {
            crate::kernels::fla::cross_entropy::cross_entropy(&logits, &chunk_labels)?
                .sum(Kind::Float)
        } else {
            logits.cross_entropy_loss::<Tensor>(&chunk_labels, None, Reduction::Sum, IGNORE, 0.0)
        } * &count;
        (&loss * scale).backward();
        total += loss.detach();
        start += n;
    }
    crate::shim::backward(&before_last, &flat.grad().view([b, labelled, h]))?;
    Ok(total)
}

/// Mean next-token cross-entropy of `logits` (`[B, T, vocab]`) over the labels that are not [`IGNORE`].
pub fn next_token_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    // Cross-entropy runs in float32 under autocast; the logits need not be cast first.
    let vocab = logits.size()[2];
    logits
        .narrow(1, 0, labels.size()[1])
        .reshape([-1, vocab])
        .cross_entropy_loss::<Tensor>(&labels.reshape([-1]), None, Reduction::Mean, IGNORE, 0.0)
}

/// fla's three `ShortConvolution`s under `p`, of q, k and v (`q_conv1d`, `k_conv1d`, `v_conv1d`): depthwise
/// weights `[channels, 1, taps]` initialised by `init`.
pub fn short_convs(p: &nn::Path<'_>, taps: u32, [q, k, v]: [i64; 3], init: Init) -> [Tensor; 3] {
    let taps = i64::from(taps);
    let conv = |name: &str, channels: i64| (p / name).var("weight", &[channels, 1, taps], init);
    [
        conv("q_conv1d", q),
        conv("k_conv1d", k),
        conv("v_conv1d", v),
    ]
}

/// fla's `ShortConvolution` on `x` `[B, T, C]`: a depthwise causal convolution with `weight` `[C, 1, W]`
/// (`nn.Conv1d` cross-correlation, no bias), restarted at every document (a tap before the document's
/// first token reads zero: `positions` `[B, T]` are the tokens' positions in their documents), then
/// SiLU.
// `y = y + tap`, not `y += tap`: an in-place add would overwrite a tensor autograd still needs.
#[allow(clippy::assign_op_pattern)]
pub fn short_conv(x: &Tensor, weight: &Tensor, positions: &Tensor) -> Tensor {
    let size = x.size();
    let (t, taps) = (size[1], weight.size()[2]);
    let padded = x.constant_pad_nd([0, 0, taps - 1, 0]);
    let mut y = Tensor::zeros_like(x);
    for j in 0..taps {
        // Tap j reads x[t − (W − 1) + j]: inside the document when the position is at least W − 1 − j.
        let back = taps - 1 - j;
        let inside = positions.ge(back).unsqueeze(-1).to_kind(x.kind());
        let tap = weight.select(1, 0).select(1, j);
        y = y + padded.narrow(1, j, t) * inside * tap;
    }
    y.silu()
}

/// `x / sqrt(Σ x² + 1e-6)` over the last dimension, in float32 (fla's `l2norm`, as DeltaNet and Gated
/// DeltaNet normalise q and k inside their kernels), returned in `x`'s dtype.
pub fn l2_norm(x: &Tensor) -> Tensor {
    let kind = compute_kind(x.kind());
    let xf = x.to_kind(kind);
    let norm = (xf.pow_tensor_scalar(2).sum_dim_intlist(-1, true, kind) + 1e-6).rsqrt();
    (xf * norm).to_kind(x.kind())
}

/// fla's per-head output norm: RMSNorm of `o` `[B, T, H, dv]` over `dv` with one `weight` `[dv]` for
/// every head, times the gate's activation when there is a gate (`FusedRMSNormGated`: one float32 pass,
/// one rounding).
pub fn head_norm(
    o: &Tensor,
    weight: &Tensor,
    eps: f64,
    gate: Option<(&Tensor, GateActivation)>,
) -> Tensor {
    let kind = compute_kind(o.kind());
    let of = o.to_kind(kind);
    let variance = of.pow_tensor_scalar(2).mean_dim(-1, true, kind);
    let normed = of * (variance + eps).rsqrt() * weight.to_kind(kind);
    let out = match gate {
        None => normed,
        Some((g, GateActivation::Swish)) => normed * g.to_kind(kind).silu(),
        Some((g, GateActivation::Sigmoid)) => normed * g.to_kind(kind).sigmoid(),
    };
    out.to_kind(o.kind())
}

/// [`head_norm`], on fla's fused kernel (`FusedRMSNormGated`, [`crate::kernels::fla::norm`]) when the
/// layer has a gate and `fla` (it runs fla's kernels, and fla's layer fuses this norm).
pub fn gated_head_norm(
    o: &Tensor,
    weight: &Tensor,
    eps: f64,
    gate: Option<(&Tensor, GateActivation)>,
    fla: bool,
) -> Tensor {
    match gate {
        // MixingKernels::resolve checked the build when it chose fla's kernels.
        Some((g, activation)) if fla => {
            crate::kernels::fla::norm::gated_rms_norm(o, g, weight, eps, activation)
                .unwrap_or_else(|e| panic!("{e}"))
        }
        _ => head_norm(o, weight, eps, gate),
    }
}

/// [`short_conv`] of a layer in `context`: on fla's kernel (`ShortConvolution`'s Triton
/// `causal_conv1d`, [`crate::kernels::fla::conv`]) when the layer runs fla's kernels.
pub fn layer_short_conv(x: &Tensor, weight: &Tensor, context: &Context<'_>) -> Tensor {
    match &context.fla {
        // MixingKernels::resolve checked the build when it chose fla's kernels.
        Some(varlen) => crate::kernels::fla::conv::short_conv(x, weight, varlen)
            .unwrap_or_else(|e| panic!("{e}")),
        None => short_conv(x, weight, &context.inputs.positions),
    }
}

/// [`swiglu`] of a block in `context`: the product and the down projection on fla's kernels
/// (`GatedMLP`'s `SwiGLULinearFunction`, [`crate::kernels::fla::swiglu`]) when the layers run fla's
/// kernels.
pub fn layer_swiglu(
    x: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    down: &Tensor,
    context: &Context<'_>,
) -> Tensor {
    if context.fla.is_none() {
        return swiglu(x, gate, up, down);
    }
    // MixingKernels::resolve checked the build when it chose fla's kernels.
    crate::kernels::fla::swiglu::swiglu_linear(
        &x.linear(gate, None::<Tensor>),
        &x.linear(up, None::<Tensor>),
        down,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    /// Matmuls on the stacked weights (widths that are multiples of 8 apart from the others) give each
    /// projection, in order, and the gradients of `x` and of every weight that separate `linear`s give
    /// (float64: equal up to the order of the sums).
    #[test]
    fn stacked_projections_are_the_separate_ones() {
        let opts = (Kind::Double, Device::Cpu);
        let x = Tensor::randn([2, 7, 16], opts).set_requires_grad(true);
        let ws: Vec<Tensor> = [5, 8, 3, 16, 1, 24]
            .iter()
            .map(|&n| Tensor::randn([n, 16], opts).set_requires_grad(true))
            .collect();
        let refs: Vec<&Tensor> = ws.iter().collect();
        let ours = super::projections(&x, &refs);
        let theirs: Vec<Tensor> = ws.iter().map(|w| x.linear(w, None::<Tensor>)).collect();
        let dys: Vec<Tensor> = theirs
            .iter()
            .map(|y| Tensor::randn(y.size(), opts))
            .collect();
        let mut leaves = vec![&x];
        leaves.extend(ws.iter());
        let grads = |ys: &[Tensor]| {
            let loss = ys
                .iter()
                .zip(&dys)
                .map(|(y, dy)| (y * dy).sum(Kind::Double))
                .fold(Tensor::zeros([], opts), |a, b| a + b);
            Tensor::run_backward(&[loss], &leaves, false, false)
        };
        let close = |a: &Tensor, b: &Tensor| {
            assert_eq!(a.size(), b.size());
            let err = (a - b).abs().max().double_value(&[]);
            assert!(err < 1e-12, "difference {err}");
        };
        for (a, b) in ours.iter().zip(&theirs) {
            close(a, b);
        }
        for (a, b) in grads(&ours).iter().zip(&grads(&theirs)) {
            close(a, b);
        }
    }

    /// libtorch's `rms_norm`, which CUDA runs fused for float32 inputs, is the function [`super::rms_norm`]
    /// computes (checked here on the CPU, where both are composite ops), gradients included.
    #[test]
    fn libtorch_rms_norm_is_the_llama_norm() {
        for kind in [Kind::Float, Kind::Double] {
            let x = (Tensor::randn([3, 5, 64], (kind, Device::Cpu)) * 3.0).set_requires_grad(true);
            let w = Tensor::randn([64], (kind, Device::Cpu)).set_requires_grad(true);
            let dy = Tensor::randn([3, 5, 64], (kind, Device::Cpu));
            let ours = super::rms_norm(&x, &w, 1e-6);
            let grads = |y: &Tensor| Tensor::run_backward(&[y * &dy], &[&x, &w], false, false);
            let theirs = x.rms_norm([64].as_slice(), Some(&w), 1e-6);
            let tolerance = if kind == Kind::Float { 1e-5 } else { 1e-12 };
            let close = |a: &Tensor, b: &Tensor| {
                let err = (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]);
                assert!(err < tolerance, "{kind:?}: relative difference {err}");
            };
            close(&ours, &theirs);
            for (a, b) in grads(&ours).iter().zip(&grads(&theirs)) {
                close(a, b);
            }
        }
    }
}
