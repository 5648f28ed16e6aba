//! A pre-norm block's residual add and norm fused into one kernel each way, on CUDA: flame's own Triton
//! kernels (`tools/kernels/residual_norm.py`, compiled ahead of time with fla's by
//! `tools/setup-kernels.sh`, launched as that file's `forward` and `backward` launch them). Under
//! autocast the residual stream is float32 and a block's branch (attention, MLP) ends in a bf16 matmul;
//! unfused, the sum, its norm in float32 and the bf16 copy the next matmul reads are three kernels, and
//! their backward as many again. Here the forward pass writes the sum (float32, the next residual) and
//! the norm in the branch's dtype from one read of each input; the backward pass writes the sum's
//! gradient in float32 for the residual and in the branch's dtype for the branch, and partial sums of the
//! weight's and bias's gradients. LayerNorm (GPT-2's) or RMSNorm (Llama's, fla's), weight times the
//! normalised sum, one rounding.

use serde_json::json;
use tch::{Kind, Tensor};

use super::cubin::{Arg, Kernels, Variant};
use super::fla::{cdiv, int};
use crate::shim::kernels::{self as bridge, Forward, Function};

/// `(norm(residual + branch), residual + branch)`: `branch` `[…, D]` bf16, `residual` the same shape in
/// float32, `weight` `[D]` and, for LayerNorm, `bias` `[D]` (RMSNorm without). The norm comes out in
/// bf16, the sum in float32.
///
/// # Errors
/// For shapes or dtypes the kernels do not take, or a build without this width.
pub fn residual_norm(
    branch: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor), String> {
    let shape = branch.size();
    let d = *shape.last().ok_or("residual_norm: no dimensions")?;
    if residual.size() != shape
        || weight.size() != [d]
        || bias.is_some_and(|b| b.size() != [d])
        || branch.kind() != Kind::BFloat16
        || residual.kind() != Kind::Float
    {
        return Err(format!(
            "residual_norm: branch {shape:?} ({:?}) and residual {:?} ({:?}) must be [.., D] bf16 and float32, weight {:?} (and bias) [D]",
            branch.kind(),
            residual.size(),
            residual.kind(),
            weight.size()
        ));
    }
    let rows = |t: &Tensor| t.contiguous().view([-1, d]);
    let (x, res) = (rows(branch), rows(residual));
    let mut inputs = vec![&x, &res, weight];
    inputs.extend(bias);
    let rms = if bias.is_some() { 0.0 } else { 1.0 };
    let mut outputs = bridge::apply(&RESIDUAL_NORM, &[eps, rms], &inputs)?;
    let sum = outputs.pop().ok_or("residual_norm: no sum")?;
    let normed = outputs.pop().ok_or("residual_norm: no norm")?;
    Ok((normed.view(shape.as_slice()), sum.view(shape.as_slice())))
}

/// Whether the build has the kernels of the norm over `d`-wide rows (`rms`: RMSNorm, else LayerNorm).
pub fn check(kernels: &'static Kernels, d: i64, rms: bool) -> Result<(), String> {
    norm_kernel(kernels, "residual_norm_fwd_kernel", d, rms)?;
    norm_kernel(kernels, "residual_norm_bwd_kernel", d, rms)?;
    Ok(())
}

static RESIDUAL_NORM: Function = Function {
    name: "residual_norm",
    forward,
    backward,
};

fn norm_kernel(
    kernels: &'static Kernels,
    name: &str,
    d: i64,
    rms: bool,
) -> Result<Variant<'static>, String> {
    kernels.find(
        &format!("residual_norm.{name}"),
        &[
            ("D", json!(d)),
            ("IS_RMS_NORM", json!(rms)),
            ("HAS_BIAS", json!(!rms)),
        ],
    )
}

fn forward(scalars: &[f64], inputs: &[Tensor]) -> Result<Forward, String> {
    let kernels = Kernels::installed()?;
    let (x, res, weight) = (&inputs[0], &inputs[1], &inputs[2]);
    let bias = inputs.get(3);
    let rms = bias.is_none();
    let (rows, d) = (x.size()[0], x.size()[1]);
    let variant = norm_kernel(kernels, "residual_norm_fwd_kernel", d, rms)?;
    let (y, h) = (x.empty_like(), res.empty_like());
    let options = (Kind::Float, x.device());
    let (mean, rstd) = (
        Tensor::empty([rows], options),
        Tensor::empty([rows], options),
    );
    #[allow(clippy::cast_possible_truncation)] // the kernel's eps is an fp32
    let eps = Arg::F32(scalars[0] as f32);
    let mut args = vec![
        ("x", Arg::Tensor(x)),
        ("res", Arg::Tensor(res)),
        ("w", Arg::Tensor(weight)),
        ("y", Arg::Tensor(&y)),
        ("res_out", Arg::Tensor(&h)),
        ("rstd", Arg::Tensor(&rstd)),
        ("eps", eps),
    ];
    if let Some(bias) = bias {
        args.extend([("b", Arg::Tensor(bias)), ("mean", Arg::Tensor(&mean))]);
    }
    variant.launch([rows, 1, 1], &args)?;
    let mut saved = vec![h.shallow_clone(), weight.shallow_clone(), rstd];
    if let Some(bias) = bias {
        saved.extend([bias.shallow_clone(), mean]);
    }
    Ok(Forward {
        outputs: vec![y, h],
        saved,
    })
}

fn backward(_: &[f64], saved: &[Tensor], grads: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
    let kernels = Kernels::installed()?;
    let (h, weight, rstd) = (&saved[0], &saved[1], &saved[2]);
    let (bias, mean) = (saved.get(3), saved.get(4));
    let (rows, d) = (h.size()[0], h.size()[1]);
    let variant = norm_kernel(kernels, "residual_norm_bwd_kernel", d, bias.is_none())?;
    let dy = grads[0].to_kind(Kind::BFloat16).contiguous();
    let dres = grads[1].to_kind(Kind::Float).contiguous();
    let programs = cdiv(rows, variant.constexpr("ROWS")?);
    let (dx, dres_in) = (dy.empty_like(), dres.empty_like());
    let partial = || Tensor::empty([programs, d], (Kind::Float, h.device()));
    let (dw, db) = (partial(), partial());
    let mut args = vec![
        ("h", Arg::Tensor(h)),
        ("w", Arg::Tensor(weight)),
        ("dy", Arg::Tensor(&dy)),
        ("dres", Arg::Tensor(&dres)),
        ("dx", Arg::Tensor(&dx)),
        ("dres_in", Arg::Tensor(&dres_in)),
        ("dw", Arg::Tensor(&dw)),
        ("rstd", Arg::Tensor(rstd)),
        ("T", int(rows)?),
    ];
    if let Some(mean) = mean {
        args.extend([("db", Arg::Tensor(&db)), ("mean", Arg::Tensor(mean))]);
    }
    variant.launch([programs, 1, 1], &args)?;
    let total = |partial: &Tensor, like: &Tensor| {
        partial
            .sum_dim_intlist(0, false, Kind::Float)
            .to_kind(like.kind())
    };
    let mut out = vec![Some(dx), Some(dres_in), Some(total(&dw, weight))];
    if let Some(bias) = bias {
        out.push(Some(total(&db, bias)));
    }
    Ok(out)
}
