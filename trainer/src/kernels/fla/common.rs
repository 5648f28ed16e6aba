//! What DeltaNet's and Gated DeltaNet's ops share, as fla's wrappers share it: the L2 norm of q and k
//! (`fla/modules/norm/l2norm.py`), the sequential state pass over chunks and its gradient
//! (`fla/ops/common/chunk_delta_h.py`), the output pass and the gradients of v (within its chunk), q,
//! k and w (`fla/ops/common/chunk_o.py`). Each runs without a gate (DeltaNet) or with Gated DeltaNet's
//! scalar gate `g` (`USE_G`) and its states stored `[V, K]` (`STATE_V_FIRST`), as [`Family`] says.

// The math's own names (q, k, v, w, u, h, g) read better here than longer ones.
#![allow(clippy::many_single_char_names)]

use serde_json::{Value, json};
use tch::{Kind, Tensor};

use super::{Shape, cdiv, int, next_power_of_2};
use crate::kernels::cubin::{Arg, Kernels, Variant};

/// fla's `l2norm_fwd`/`l2norm_bwd` epsilon.
const L2_EPS: f32 = 1e-6;
/// Tokens per chunk (`BT`).
pub(super) const CHUNK: i64 = 64;

/// Which of fla's two delta-rule ops the kernels serve, as flame's layers call them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    /// `chunk_delta_rule`: no gate, states `[K, V]`.
    Delta,
    /// `chunk_gated_delta_rule(…, state_v_first=True)`: the chunk-local cumulative gate `g` (fp32, in
    /// log2 units), states `[V, K]`.
    Gated,
}

/// A delta-rule op's [`Shape`] and its [`Family`] (the switches its kernels are specialised on).
#[derive(Debug)]
pub(super) struct DeltaShape {
    sizes: Shape,
    /// The op.
    pub family: Family,
}

impl std::ops::Deref for DeltaShape {
    type Target = Shape;

    fn deref(&self) -> &Shape {
        &self.sizes
    }
}

impl DeltaShape {
    /// The shape of the op on `k` `[1, T, H, K]` and `v` `[1, T, H, V]` over `varlen`'s documents.
    pub fn of(k: &Tensor, v: &Tensor, varlen: &[Tensor], family: Family) -> Self {
        Self {
            sizes: Shape::of(k, v, varlen),
            family,
        }
    }

    /// The shape of a layer, for looking kernels up (no tokens).
    pub fn of_layer(heads: u32, k: u32, v: u32, family: Family) -> Self {
        Self {
            sizes: Shape::of_layer(heads, k, v),
            family,
        }
    }

    /// `USE_G` of this op's kernels.
    pub fn use_g(&self) -> (&'static str, Value) {
        ("USE_G", json!(self.family == Family::Gated))
    }

    /// `STATE_V_FIRST` of this op's kernels.
    pub fn state_v_first(&self) -> (&'static str, Value) {
        ("STATE_V_FIRST", json!(self.family == Family::Gated))
    }

    /// The states' shape: `[1, NT, H, K, V]`, or `[1, NT, H, V, K]` with `STATE_V_FIRST`.
    fn states(&self) -> [i64; 5] {
        match self.family {
            Family::Delta => [1, self.chunks, self.heads, self.k, self.v],
            Family::Gated => [1, self.chunks, self.heads, self.v, self.k],
        }
    }

    /// The argument `g` of the gated kernels: given exactly when the op has the gate.
    fn gate<'t>(&self, g: Option<&'t Tensor>) -> Result<Option<(&'static str, Arg<'t>)>, String> {
        match (self.family, g) {
            (Family::Gated, Some(g)) => Ok(Some(("g", tensor(g)))),
            (Family::Delta, None) => Ok(None),
            (family, g) => Err(format!(
                "{family:?}'s kernels {} the gate g",
                if g.is_some() { "take no" } else { "need" }
            )),
        }
    }
}

/// Whether the build has the shared kernels of `shape`'s op; `Err` names the first it lacks.
pub(super) fn check(kernels: &'static Kernels, shape: &DeltaShape) -> Result<(), String> {
    for name in ["l2norm_fwd_kernel", "l2norm_bwd_kernel"] {
        l2norm_kernel(kernels, 0, shape.k, name)?;
    }
    for name in [
        "chunk_gated_delta_rule_fwd_kernel_h_blockdim64",
        "chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64",
    ] {
        state_kernel(kernels, shape, name)?;
    }
    output_kernel(kernels, shape)?;
    local_value_kernel(kernels, shape)?;
    qkw_kernel(kernels, shape)?;
    Ok(())
}

/// A tensor argument.
pub(super) fn tensor(x: &Tensor) -> Arg<'_> {
    Arg::Tensor(x)
}

/// The arguments of the chunked kernels that say where each chunk is.
pub(super) fn chunk_args(varlen: &[Tensor]) -> [(&'static str, Arg<'_>); 2] {
    [
        ("cu_seqlens", tensor(&varlen[0])),
        ("chunk_indices", tensor(&varlen[1])),
    ]
}

/// `args` and then `rest`.
pub(super) fn with<'t>(
    mut args: Vec<(&'static str, Arg<'t>)>,
    rest: impl IntoIterator<Item = (&'static str, Arg<'t>)>,
) -> Vec<(&'static str, Arg<'t>)> {
    args.extend(rest);
    args
}

/// The variant of the L2-norm kernel `name` for `rows` rows of `d` (the `NB` constexpr only buckets
/// autotuning in fla: any build of this `D` computes the same).
fn l2norm_kernel(
    kernels: &'static Kernels,
    rows: i64,
    d: i64,
    name: &str,
) -> Result<Variant<'static>, String> {
    let kernel = format!("modules.norm.l2norm.{name}");
    let spec = [("D", json!(d)), ("BD", json!(next_power_of_2(d)))];
    kernels
        .find(
            &kernel,
            &[
                spec[0].clone(),
                spec[1].clone(),
                ("NB", json!(cdiv(rows, 2048 * 32))),
            ],
        )
        .or_else(|_| kernels.find_first(&kernel, &spec))
}

/// The rows of `[…, D]` as the L2-norm kernels see them, and `D`.
fn rows(x: &Tensor) -> (i64, i64) {
    let d = *x.size().last().expect("a feature dimension");
    (x.size().iter().product::<i64>() / d, d)
}

/// `x / ‖x‖` over the last dimension, and `1 / ‖x‖` (fp32) per row (fla's `l2norm_fwd`).
pub(super) fn l2norm_forward(
    kernels: &'static Kernels,
    x: &Tensor,
) -> Result<(Tensor, Tensor), String> {
    let (rows, d) = rows(x);
    let variant = l2norm_kernel(kernels, rows, d, "l2norm_fwd_kernel")?;
    let y = x.empty_like();
    let rstd = Tensor::empty(&x.size()[..x.dim() - 1], (Kind::Float, x.device()));
    variant.launch(
        [cdiv(rows, variant.constexpr("BT")?), 1, 1],
        &[
            ("x", tensor(x)),
            ("y", tensor(&y)),
            ("rstd", tensor(&rstd)),
            ("eps", Arg::F32(L2_EPS)),
            ("T", int(rows)?),
        ],
    )?;
    Ok((y, rstd))
}

/// The gradient of the L2 norm's input from its output `y`, `rstd` and the output's gradient (fla's
/// `l2norm_bwd`).
pub(super) fn l2norm_backward(
    kernels: &'static Kernels,
    y: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<Tensor, String> {
    let (rows, d) = rows(y);
    let variant = l2norm_kernel(kernels, rows, d, "l2norm_bwd_kernel")?;
    let dy = dy.contiguous();
    let dx = y.empty_like();
    variant.launch(
        [cdiv(rows, variant.constexpr("BT")?), 1, 1],
        &[
            ("y", tensor(y)),
            ("rstd", tensor(rstd)),
            ("dy", tensor(&dy)),
            ("dx", tensor(&dx)),
            ("eps", Arg::F32(L2_EPS)),
            ("T", int(rows)?),
        ],
    )?;
    Ok(dx)
}

fn state_kernel(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    name: &str,
) -> Result<Variant<'static>, String> {
    shape.find(
        kernels,
        &format!("ops.common.chunk_delta_h.{name}"),
        &[shape.use_g(), shape.state_v_first()],
    )
}

fn output_kernel(
    kernels: &'static Kernels,
    shape: &DeltaShape,
) -> Result<Variant<'static>, String> {
    shape.find(
        kernels,
        "ops.common.chunk_o.chunk_fwd_kernel_o",
        &[shape.use_g(), shape.state_v_first()],
    )
}

fn local_value_kernel(
    kernels: &'static Kernels,
    shape: &DeltaShape,
) -> Result<Variant<'static>, String> {
    shape.find(
        kernels,
        "ops.common.chunk_o.chunk_bwd_kernel_dv_local",
        &[shape.use_g()],
    )
}

fn qkw_kernel(kernels: &'static Kernels, shape: &DeltaShape) -> Result<Variant<'static>, String> {
    shape.find(
        kernels,
        "ops.common.chunk_o.chunk_bwd_kernel_dqkwg",
        &[shape.use_g(), shape.state_v_first(), ("B", json!(1))],
    )
}

/// The state before every chunk, `h` (bf16, [`Shape::states`]), and `v_new = u − w h` (fla's
/// `chunk_gated_delta_rule_fwd_h`).
pub(super) fn state_pass(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    [k, w, u]: [&Tensor; 3],
    g: Option<&Tensor>,
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor), String> {
    let variant = state_kernel(
        kernels,
        shape,
        "chunk_gated_delta_rule_fwd_kernel_h_blockdim64",
    )?;
    let h = Tensor::empty(shape.states(), (Kind::BFloat16, k.device()));
    let v_new = u.empty_like();
    variant.launch(
        [
            cdiv(shape.v, variant.constexpr("BV")?) * shape.documents * shape.heads,
            1,
            1,
        ],
        &with(
            vec![
                ("k", tensor(k)),
                ("v", tensor(u)),
                ("w", tensor(w)),
                ("v_new", tensor(&v_new)),
                ("h", tensor(&h)),
                ("cu_seqlens", tensor(&varlen[0])),
                ("chunk_offsets", tensor(&varlen[2])),
                ("T", int(shape.tokens)?),
            ],
            shape.gate(g)?,
        ),
    )?;
    Ok((h, v_new))
}

/// `o = scale · (q h + tril(q kᵀ) v_new)` per chunk, with the gate's decay where the op has it (fla's
/// `chunk_fwd_o`).
pub(super) fn output_pass(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    scale: f64,
    [q, k, v_new, h]: [&Tensor; 4],
    g: Option<&Tensor>,
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let variant = output_kernel(kernels, shape)?;
    let o = v_new.empty_like();
    #[allow(clippy::cast_possible_truncation)] // fla passes the scale as fp32
    variant.launch(
        [
            cdiv(shape.v, variant.constexpr("BV")?) * shape.chunks,
            shape.heads,
            1,
        ],
        &with(
            with(
                vec![
                    ("q", tensor(q)),
                    ("k", tensor(k)),
                    ("v", tensor(v_new)),
                    ("h", tensor(h)),
                    ("o", tensor(&o)),
                    ("scale", Arg::F32(scale as f32)),
                    ("T", int(shape.tokens)?),
                ],
                chunk_args(varlen),
            ),
            shape.gate(g)?,
        ),
    )?;
    Ok(o)
}

/// The values' gradient from within their own chunk: `scale · tril(q kᵀ)ᵀ do`, decayed where the op
/// has the gate (fla's `chunk_bwd_dv_local`).
pub(super) fn local_value_grad(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    scale: f64,
    [q, k, d_o]: [&Tensor; 3],
    g: Option<&Tensor>,
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let dv = d_o.empty_like();
    #[allow(clippy::cast_possible_truncation)]
    local_value_kernel(kernels, shape)?.launch(
        [shape.chunks, shape.heads, 1],
        &with(
            with(
                vec![
                    ("q", tensor(q)),
                    ("k", tensor(k)),
                    ("do", tensor(d_o)),
                    ("dv", tensor(&dv)),
                    ("scale", Arg::F32(scale as f32)),
                    ("T", int(shape.tokens)?),
                ],
                chunk_args(varlen),
            ),
            shape.gate(g)?,
        ),
    )?;
    Ok(dv)
}

/// The states' gradients `dh` (backwards over chunks) and the values' full gradient (fla's
/// `chunk_gated_delta_rule_bwd_dhu`).
pub(super) fn state_grad(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    scale: f64,
    [q, k, w, d_o, dv]: [&Tensor; 5],
    g: Option<&Tensor>,
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor), String> {
    let variant = state_kernel(
        kernels,
        shape,
        "chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64",
    )?;
    let dh = Tensor::empty(shape.states(), (Kind::BFloat16, q.device()));
    let dv2 = dv.empty_like();
    #[allow(clippy::cast_possible_truncation)]
    variant.launch(
        [
            cdiv(shape.v, variant.constexpr("BV")?) * shape.documents * shape.heads,
            1,
            1,
        ],
        &with(
            vec![
                ("q", tensor(q)),
                ("k", tensor(k)),
                ("w", tensor(w)),
                ("do", tensor(d_o)),
                ("dh", tensor(&dh)),
                ("dv", tensor(dv)),
                ("dv2", tensor(&dv2)),
                ("cu_seqlens", tensor(&varlen[0])),
                ("chunk_offsets", tensor(&varlen[2])),
                ("scale", Arg::F32(scale as f32)),
                ("T", int(shape.tokens)?),
            ],
            shape.gate(g)?,
        ),
    )?;
    Ok((dh, dv2))
}

/// The gradients of q, k (through the states and the chunk) and w, and where the op has the gate,
/// the gate's `[1, T, H]` fp32 (the kernel's per-`BK` partial sums, summed as fla's
/// `chunk_bwd_dqkwg` sums them).
pub(super) fn qkw_grad(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    scale: f64,
    [q, k, v_new, h, d_o, dh, dv]: [&Tensor; 7],
    g: Option<&Tensor>,
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>), String> {
    let variant = qkw_kernel(kernels, shape)?;
    let blocks = cdiv(shape.k, variant.constexpr("BK")?);
    let (dq, dk, dw) = (q.empty_like(), k.empty_like(), k.empty_like());
    let dg = g.map(|g| {
        let mut size = g.size();
        size.insert(0, blocks);
        Tensor::empty(size.as_slice(), (Kind::Float, g.device()))
    });
    #[allow(clippy::cast_possible_truncation)]
    variant.launch(
        [blocks * shape.chunks, shape.heads, 1],
        &with(
            with(
                vec![
                    ("q", tensor(q)),
                    ("k", tensor(k)),
                    ("v", tensor(v_new)),
                    ("h", tensor(h)),
                    ("do", tensor(d_o)),
                    ("dh", tensor(dh)),
                    ("dq", tensor(&dq)),
                    ("dk", tensor(&dk)),
                    ("dw", tensor(&dw)),
                    ("dv", tensor(dv)),
                    ("scale", Arg::F32(scale as f32)),
                    ("T", int(shape.tokens)?),
                ],
                chunk_args(varlen),
            ),
            shape
                .gate(g)?
                .into_iter()
                .chain(dg.as_ref().map(|dg| ("dg", tensor(dg)))),
        ),
    )?;
    let dg = dg.map(|dg| dg.sum_dim_intlist(0, false, Kind::Float));
    Ok((dq, dk, dw, dg))
}
