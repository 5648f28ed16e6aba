//! The MLP's SwiGLU and down projection as fla 0.6.0's `GatedMLP` runs them by default
//! (`fla/modules/activations/ops.py`, `SwiGLULinearFunction`): `down(silu(gate) · up)` in bf16, the
//! product `silu(gate) · up` made by one kernel and not kept; the backward pass gets the gradients of
//! the gate and the up projection and the product again (for the down projection's weight gradient)
//! from one more kernel.

use serde_json::json;
use tch::{Kind, Tensor};

use super::common::tensor;
use super::{cdiv, int};
use crate::kernels::cubin::{Kernels, Variant};
use crate::shim::kernels::{self as bridge, Forward, Function};

/// `silu(gate) · up` (`[…, D]` each) times `weight`ᵀ (`[H, D]`, the down projection's): `[…, H]` in
/// bf16.
pub fn swiglu_linear(gate: &Tensor, up: &Tensor, weight: &Tensor) -> Result<Tensor, String> {
    let d = *gate
        .size()
        .last()
        .ok_or("swiglu_linear: gate has no dimensions")?;
    if up.size() != gate.size() || weight.dim() != 2 || weight.size()[1] != d {
        return Err(format!(
            "swiglu_linear: gate {:?}, up {:?} must have one shape [.., D] and weight {:?} be [H, D]",
            gate.size(),
            up.size(),
            weight.size()
        ));
    }
    let mut shape = gate.size();
    *shape.last_mut().expect("checked") = weight.size()[0];
    let rows = |t: &Tensor| t.to_kind(Kind::BFloat16).contiguous().view([-1, d]);
    let mut outputs = bridge::apply(&SWIGLU_LINEAR, &[], &[&rows(gate), &rows(up), weight])?;
    Ok(outputs.remove(0).view(shape.as_slice()))
}

/// Whether the build has the kernels of a `d`-wide SwiGLU.
pub fn check(kernels: &'static Kernels, d: i64) -> Result<(), String> {
    swiglu_kernel(kernels, "swiglu_fwd_kernel", d)?;
    swiglu_kernel(kernels, "swiglu_fwdbwd_kernel", d)?;
    Ok(())
}

static SWIGLU_LINEAR: Function = Function {
    name: "fla swiglu_linear",
    forward,
    backward,
};

/// The variant of `modules.activations.ops.<name>` for `d` channels (the backward kernel's with the
/// product written out, `HAS_WEIGHT`).
fn swiglu_kernel(
    kernels: &'static Kernels,
    name: &str,
    d: i64,
) -> Result<Variant<'static>, String> {
    let kernel = format!("modules.activations.ops.{name}");
    if name == "swiglu_fwdbwd_kernel" {
        kernels.find(&kernel, &[("D", json!(d)), ("HAS_WEIGHT", json!(true))])
    } else {
        kernels.find(&kernel, &[("D", json!(d))])
    }
}

/// `silu(x) · y` of two `[N, D]` bf16 tensors.
fn product(kernels: &'static Kernels, x: &Tensor, y: &Tensor) -> Result<Tensor, String> {
    let d = x.size()[1];
    let variant = swiglu_kernel(kernels, "swiglu_fwd_kernel", d)?;
    let z = x.empty_like();
    let elements = i64::try_from(x.numel()).map_err(|e| e.to_string())?;
    variant.launch(
        [cdiv(elements, variant.constexpr("B")?), 1, 1],
        &[
            ("x", tensor(x)),
            ("y", tensor(y)),
            ("z", tensor(&z)),
            ("stride_x_row", int(d)?),
            ("stride_y_row", int(d)?),
            ("stride_z_row", int(d)?),
            ("T", int(elements)?),
        ],
    )?;
    Ok(z)
}

fn forward(_: &[f64], inputs: &[Tensor]) -> Result<Forward, String> {
    let kernels = Kernels::installed()?;
    let [x, y, weight] = inputs else {
        return Err("three inputs".into());
    };
    let z = product(kernels, x, y)?;
    // fla's forward runs with the inputs cast to bf16 and autocast off: a bf16 product.
    let out = z.matmul(&weight.to_kind(Kind::BFloat16).tr());
    Ok(Forward {
        outputs: vec![out],
        saved: inputs.iter().map(Tensor::shallow_clone).collect(),
    })
}

fn backward(_: &[f64], saved: &[Tensor], grads: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
    let kernels = Kernels::installed()?;
    let [x, y, weight] = saved else {
        return Err("three saved tensors".into());
    };
    let d = x.size()[1];
    let dout = grads[0].to_kind(Kind::BFloat16).contiguous();
    let dz = dout.matmul(&weight.to_kind(Kind::BFloat16));
    let variant = swiglu_kernel(kernels, "swiglu_fwdbwd_kernel", d)?;
    let (dx, dy, z) = (x.empty_like(), y.empty_like(), x.empty_like());
    let elements = i64::try_from(x.numel()).map_err(|e| e.to_string())?;
    variant.launch(
        [cdiv(elements, variant.constexpr("B")?), 1, 1],
        &[
            ("x", tensor(x)),
            ("y", tensor(y)),
            ("g", tensor(&dz)),
            ("dx", tensor(&dx)),
            ("dy", tensor(&dy)),
            ("z", tensor(&z)),
            ("stride_x_row", int(d)?),
            ("stride_y_row", int(d)?),
            ("stride_g_row", int(d)?),
            ("stride_dx_row", int(d)?),
            ("stride_dy_row", int(d)?),
            ("stride_z_row", int(d)?),
            ("T", int(elements)?),
        ],
    )?;
    // fla's `einsum("bo,bi->oi", dout, z)` under autocast: a bf16 product, cast to the weight's dtype.
    let dw = dout.tr().matmul(&z).to_kind(weight.kind());
    Ok(vec![Some(dx), Some(dy), Some(dw)])
}
