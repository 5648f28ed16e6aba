//! The short convolutions of DeltaNet and Gated DeltaNet as fla 0.6.0's `ShortConvolution` runs them in
//! training (`fla/modules/causal_conv1d/ops.py`, `causal_conv1d` with the Triton backend, SiLU, no bias,
//! no cache): a depthwise causal convolution over each document of the flattened batch (`cu_seqlens`;
//! a tap before a document's first token reads zero), in chunks of 64 tokens, fp32 accumulation, one
//! rounding. The backward pass recomputes the convolution without its activation and then, in one
//! kernel, the input's gradient and each chunk's share of the weight's, summed after.

use serde_json::{Value, json};
use tch::{Kind, Tensor};

use super::common::tensor;
use super::{Varlen, cdiv, int, next_power_of_2};
use crate::kernels::cubin::{Kernels, Variant};
use crate::shim::kernels::{self as bridge, Forward, Function};

/// Tokens per chunk (fla's `chunk_size`, the chunks of [`Varlen::chunk_indices`]).
const CHUNK: i64 = 64;

/// `silu(conv(x))` of `x` (`[B, T, D]`) with the depthwise taps `weight` (`[D, 1, W]`, `nn.Conv1d`'s
/// layout), restarted at each of `varlen`'s documents: `[B, T, D]` in bf16.
pub fn short_conv(x: &Tensor, weight: &Tensor, varlen: &Varlen) -> Result<Tensor, String> {
    let shape = x.size();
    let wsize = weight.size();
    if x.dim() != 3 || wsize.len() != 3 || wsize[0] != shape[2] || wsize[1] != 1 {
        return Err(format!(
            "short_conv: x {shape:?} must be [B, T, D] and weight {wsize:?} [D, 1, W]"
        ));
    }
    let flat = x
        .to_kind(Kind::BFloat16)
        .contiguous()
        .view([1, shape[0] * shape[1], shape[2]]);
    let mut outputs = bridge::apply(
        &SHORT_CONV,
        &[],
        &[
            &flat,
            &weight.view([wsize[0], wsize[2]]),
            &varlen.cu_seqlens,
            &varlen.chunk_indices,
        ],
    )?;
    Ok(outputs.remove(0).view(shape.as_slice()))
}

/// Whether the build has the kernels of a `d`-wide convolution of `taps` taps.
pub fn check(kernels: &'static Kernels, d: i64, taps: i64) -> Result<(), String> {
    conv_kernel(kernels, "causal_conv1d_fwd_kernel", d, taps, Some("silu"))?;
    conv_kernel(kernels, "causal_conv1d_fwd_kernel", d, taps, None)?;
    conv_kernel(kernels, "causal_conv1d_bwd_kernel", d, taps, Some("silu"))?;
    Ok(())
}

static SHORT_CONV: Function = Function {
    name: "fla causal_conv1d",
    forward,
    backward,
};

/// The variant of `modules.causal_conv1d.ops.<name>` for `d` channels, `taps` taps and `activation`
/// (`None`: the backward pass's recomputation), one batch row (`B`) and unit channel strides, which
/// Triton compiles in.
fn conv_kernel(
    kernels: &'static Kernels,
    name: &str,
    d: i64,
    taps: i64,
    activation: Option<&str>,
) -> Result<Variant<'static>, String> {
    let spec: Vec<(&str, Value)> = vec![
        ("D", json!(d)),
        ("W", json!(taps)),
        ("BT", json!(CHUNK)),
        ("BW", json!(next_power_of_2(taps))),
        ("ACTIVATION", json!(activation)),
        ("HAS_WEIGHT", json!(true)),
        ("HAS_BIAS", json!(false)),
        ("USE_INITIAL_STATE", json!(false)),
        ("IS_VARLEN", json!(true)),
        ("B", json!(1)),
        ("stride_x_d", json!(1)),
    ];
    kernels.find(&format!("modules.causal_conv1d.ops.{name}"), &spec)
}

/// The convolution of `x` (`[1, T, D]`) by `weight` (`[D, W]`) over `varlen`'s documents
/// (`cu_seqlens`, `chunk_indices`), with `activation` or none.
fn convolve(
    kernels: &'static Kernels,
    x: &Tensor,
    weight: &Tensor,
    varlen: &[Tensor],
    activation: Option<&str>,
) -> Result<Tensor, String> {
    let (t, d, taps) = (x.size()[1], x.size()[2], weight.size()[1]);
    let variant = conv_kernel(kernels, "causal_conv1d_fwd_kernel", d, taps, activation)?;
    let y = x.empty_like();
    variant.launch(
        [cdiv(d, variant.constexpr("BD")?), varlen[1].size()[0], 1],
        &[
            ("x", tensor(x)),
            ("y", tensor(&y)),
            ("weight", tensor(weight)),
            ("cu_seqlens", tensor(&varlen[0])),
            ("chunk_indices", tensor(&varlen[1])),
            ("T", int(t)?),
            ("stride_x_n", int(t * d)?),
            ("stride_x_t", int(d)?),
        ],
    )?;
    Ok(y)
}

fn forward(_: &[f64], inputs: &[Tensor]) -> Result<Forward, String> {
    let kernels = Kernels::installed()?;
    let [x, weight, varlen @ ..] = inputs else {
        return Err("four inputs".into());
    };
    let y = convolve(kernels, x, weight, varlen, Some("silu"))?;
    Ok(Forward {
        outputs: vec![y],
        saved: inputs.iter().map(Tensor::shallow_clone).collect(),
    })
}

fn backward(_: &[f64], saved: &[Tensor], grads: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
    let kernels = Kernels::installed()?;
    let [x, weight, varlen @ ..] = saved else {
        return Err("four saved tensors".into());
    };
    let (t, d, taps) = (x.size()[1], x.size()[2], weight.size()[1]);
    // The pre-activation output, which the activation's gradient needs.
    let y = convolve(kernels, x, weight, varlen, None)?;
    let dy = grads[0].to_kind(Kind::BFloat16).contiguous();
    let dx = x.empty_like();
    let chunks = varlen[1].size()[0];
    let dw = Tensor::empty([chunks, d, taps], (Kind::Float, x.device()));
    let variant = conv_kernel(kernels, "causal_conv1d_bwd_kernel", d, taps, Some("silu"))?;
    let (stride_n, stride_t) = (int(t * d)?, int(d)?);
    variant.launch(
        [cdiv(d, variant.constexpr("BD")?), chunks, 1],
        &[
            ("x", tensor(x)),
            ("y", tensor(&y)),
            ("weight", tensor(weight)),
            ("dy", tensor(&dy)),
            ("dx", tensor(&dx)),
            ("dw", tensor(&dw)),
            ("cu_seqlens", tensor(&varlen[0])),
            ("chunk_indices", tensor(&varlen[1])),
            ("T", int(t)?),
            ("stride_x_n", stride_n),
            ("stride_x_t", stride_t),
            ("stride_dx_n", stride_n),
            ("stride_dx_t", stride_t),
            ("stride_dy_n", stride_n),
            ("stride_dy_t", stride_t),
        ],
    )?;
    let dw = dw
        .sum_dim_intlist(0, false, Kind::Float)
        .to_kind(weight.kind());
    Ok(vec![Some(dx), Some(dw), None, None])
}
