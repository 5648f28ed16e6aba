//! The linear mixers' gated output norm as fla 0.6.0's `FusedRMSNormGated` computes it
//! (`fla/modules/norm/fused_norm_gate.py`, `rms_norm_gated` without bias or residual): each row of
//! `D` values RMS-normalised in fp32, times the weight, times the gate's activation, one rounding to the
//! input's dtype; in the backward pass the gradients of the input and the gate in one kernel, and the
//! weight's as partial sums of fla's `min(multiprocessors, rows)` programs, summed after. fla launches
//! these blocked kernels for `D <= 512`, every head width of flame's configs; wider heads take fla's
//! row kernels, which the kernel build does not hold.

use serde_json::{Value, json};
use tch::{Kind, Tensor};

use super::common::tensor;
use super::{cdiv, int, next_power_of_2};
use crate::config::GateActivation;
use crate::kernels::cubin::{Arg, Kernels, Variant};
use crate::shim::kernels::{self as bridge, Forward, Function};

/// The widest rows of fla's blocked kernels.
const MAX_D: i64 = 512;

/// `rms_norm(x) · weight · act(g)` over the last dimension of `x` and `g` (the same shape, `[…, D]`),
/// `weight` `[D]`, in `x`'s dtype (bf16: fla's kernels take no other).
pub fn gated_rms_norm(
    x: &Tensor,
    g: &Tensor,
    weight: &Tensor,
    eps: f64,
    activation: GateActivation,
) -> Result<Tensor, String> {
    let d = *x
        .size()
        .last()
        .ok_or("gated_rms_norm: x has no dimensions")?;
    if g.size() != x.size() || weight.size() != [d] {
        return Err(format!(
            "gated_rms_norm: x {:?}, g {:?} must have one shape [.., D] and weight {:?} be [D]",
            x.size(),
            g.size(),
            weight.size()
        ));
    }
    let shape = x.size();
    let rows = |t: &Tensor| t.to_kind(Kind::BFloat16).contiguous().view([-1, d]);
    let mut outputs = bridge::apply(
        &GATED_NORM,
        &[eps, activation_code(activation)],
        &[&rows(x), &rows(g), weight],
    )?;
    Ok(outputs.remove(0).view(shape.as_slice()))
}

/// Whether the build has the kernels of the norm over `d`-wide rows with `activation`.
pub fn check(kernels: &'static Kernels, d: i64, activation: GateActivation) -> Result<(), String> {
    for name in ["layer_norm_gated_fwd_kernel", "layer_norm_gated_bwd_kernel"] {
        norm_kernel(kernels, name, 0, d, activation)?;
    }
    Ok(())
}

static GATED_NORM: Function = Function {
    name: "fla rms_norm_gated",
    forward,
    backward,
};

/// The activation as the node's scalar (its `scalars` are numbers).
fn activation_code(activation: GateActivation) -> f64 {
    match activation {
        GateActivation::Swish => 0.0,
        GateActivation::Sigmoid => 1.0,
    }
}

fn activation_of(code: f64) -> GateActivation {
    if code == 0.0 {
        GateActivation::Swish
    } else {
        GateActivation::Sigmoid
    }
}

/// The variant of `modules.norm.fused_norm_gate.<name>` for `rows` rows of `d` (the `NB` constexpr
/// only buckets fla's autotuning: any build of this `D` computes the same).
fn norm_kernel(
    kernels: &'static Kernels,
    name: &str,
    rows: i64,
    d: i64,
    activation: GateActivation,
) -> Result<Variant<'static>, String> {
    if d > MAX_D {
        return Err(format!(
            "fla's gated norm over {d}-wide heads runs its row kernels, which flame-train does not launch (at most {MAX_D})"
        ));
    }
    let kernel = format!("modules.norm.fused_norm_gate.{name}");
    let activation = match activation {
        GateActivation::Swish => "swish",
        GateActivation::Sigmoid => "sigmoid",
    };
    let spec: Vec<(&str, Value)> = vec![
        ("D", json!(d)),
        ("BD", json!(next_power_of_2(d))),
        ("ACTIVATION", json!(activation)),
        ("IS_RMS_NORM", json!(true)),
        ("HAS_WEIGHT", json!(true)),
        ("HAS_BIAS", json!(false)),
    ];
    let mut bucketed = spec.clone();
    bucketed.push(("NB", json!(cdiv(rows, 2048 * 32))));
    kernels
        .find(&kernel, &bucketed)
        .or_else(|_| kernels.find_first(&kernel, &spec))
}

fn forward(scalars: &[f64], inputs: &[Tensor]) -> Result<Forward, String> {
    let kernels = Kernels::installed()?;
    let [x, g, weight] = inputs else {
        return Err("three inputs".into());
    };
    let (rows, d) = (x.size()[0], x.size()[1]);
    let variant = norm_kernel(
        kernels,
        "layer_norm_gated_fwd_kernel",
        rows,
        d,
        activation_of(scalars[1]),
    )?;
    let y = x.empty_like();
    let rstd = Tensor::empty([rows], (Kind::Float, x.device()));
    #[allow(clippy::cast_possible_truncation)] // fla passes the eps as the kernel's fp32
    let eps = Arg::F32(scalars[0] as f32);
    variant.launch(
        [cdiv(rows, variant.constexpr("BT")?), 1, 1],
        &[
            ("x", tensor(x)),
            ("g", tensor(g)),
            ("y", tensor(&y)),
            ("w", tensor(weight)),
            ("rstd", tensor(&rstd)),
            ("eps", eps),
            ("T", int(rows)?),
        ],
    )?;
    Ok(Forward {
        outputs: vec![y],
        saved: vec![
            x.shallow_clone(),
            g.shallow_clone(),
            weight.shallow_clone(),
            rstd,
        ],
    })
}

fn backward(
    scalars: &[f64],
    saved: &[Tensor],
    grads: &[Tensor],
) -> Result<Vec<Option<Tensor>>, String> {
    let kernels = Kernels::installed()?;
    let [x, g, weight, rstd] = saved else {
        return Err("four saved tensors".into());
    };
    let (rows, d) = (x.size()[0], x.size()[1]);
    let variant = norm_kernel(
        kernels,
        "layer_norm_gated_bwd_kernel",
        rows,
        d,
        activation_of(scalars[1]),
    )?;
    let dy = grads[0].to_kind(x.kind()).contiguous();
    let (dx, dg) = (x.empty_like(), g.empty_like());
    // fla caps the programs at the multiprocessors; each sums its rows' share of the weight's gradient.
    let programs = kernels.multiprocessors(x)?.min(rows);
    let dw = Tensor::empty([programs, d], (Kind::Float, x.device()));
    variant.launch(
        [programs, 1, 1],
        &[
            ("x", tensor(x)),
            ("g", tensor(g)),
            ("w", tensor(weight)),
            ("dy", tensor(&dy)),
            ("dx", tensor(&dx)),
            ("dg", tensor(&dg)),
            ("dw", tensor(&dw)),
            ("rstd", tensor(rstd)),
            ("T", int(rows)?),
            ("BS", int(cdiv(rows, programs))?),
        ],
    )?;
    let dw = dw
        .sum_dim_intlist(0, false, Kind::Float)
        .to_kind(weight.kind());
    Ok(vec![Some(dx), Some(dg), Some(dw)])
}
