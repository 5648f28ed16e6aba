//! Gated DeltaNet's token mixing as fla 0.6.0's `chunk_gated_delta_rule` computes it
//! (`fla/ops/gated_delta_rule/chunk.py`) when fla's `GatedDeltaNet` layer calls it
//! (`use_qk_l2norm_in_kernel`, `use_beta_sigmoid_in_kernel`, `use_gate_in_kernel` with `A_log` and
//! `dt_bias`, `state_v_first`), kernel for kernel: q and k L2-normalised; β = sigmoid(b), doubled with
//! `allow_neg_eigval`; the decay `−exp(A_log) · softplus(a + dt_bias)` summed within each chunk and
//! kept in log2 units (`g`, fp32: the kernels decay with `exp2`); the WY representation with the
//! decay (`A`, `w`, `u`); the state pass (states `[V, K]`, and `v_new`); the output pass. The backward
//! pass recomputes `w`, `u` and `h`, as fla does, and ends in the gradients of the raw `a`, `b`,
//! `A_log` and `dt_bias`.

// The math's own names (q, k, v, a, b, g, w, u, h) read better here than longer ones.
#![allow(clippy::many_single_char_names)]

use serde_json::json;
use tch::{Kind, Tensor};

use super::common::{
    CHUNK, DeltaShape, Family, chunk_args, l2norm_backward, l2norm_forward, local_value_grad,
    output_pass, qkw_grad, state_grad, state_pass, tensor, with,
};
use super::{Varlen, cdiv, flat, int};
use crate::config::DeltaRuleConfig;
use crate::kernels::cubin::{Arg, Kernels, Variant};
use crate::shim::kernels::{self as bridge, Forward, Function};

/// fla's `RCP_LN2` (`fla/ops/utils/constant.py`: 1.4426950216, "best FP32 approximation"
/// `0x3FB8AA3B`), the gate's scale into log2 units, as the kernel takes it: the fp32 nearest `1 / ln 2`.
const RCP_LN2: f32 = std::f32::consts::LOG2_E;
/// fla's `_BETA_SIGMOID_BLOCK_SIZE` (`fla/ops/common/gate.py`).
const BETA_BLOCK: i64 = 2048;
/// The tokens per block of `gdn_gate_bwd` (`BT = 32` in `fla/ops/gated_delta_rule/gate.py`).
const GATE_BWD_BLOCK: i64 = 32;

/// Gated DeltaNet's mixing of `q`, `k` (`[B, T, H, K]`, before their L2 norm) and `v`
/// (`[B, T, H, V]`) over `varlen`'s documents, with the raw gate inputs `a = a_proj(x)` and
/// `b = b_proj(x)` (`[B, T, H]`) and the layer's `a_log` and `dt_bias` (`[H]`, fp32): `[B, T, H, V]`
/// in bf16. β = sigmoid(b), times 2 with `allow_neg_eigval`; the decay `g = −exp(A_log) ·
/// softplus(a + dt_bias)`.
#[allow(clippy::too_many_arguments)] // fla's arguments, in fla's order
pub fn chunk_gated_delta_rule(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    a: &Tensor,
    b: &Tensor,
    a_log: &Tensor,
    dt_bias: &Tensor,
    scale: f64,
    allow_neg_eigval: bool,
    varlen: &Varlen,
) -> Result<Tensor, String> {
    let shape = v.size();
    let inputs = [flat(q), flat(k), flat(v), flat(a), flat(b)];
    let parameters = [
        a_log.to_kind(Kind::Float).contiguous(),
        dt_bias.to_kind(Kind::Float).contiguous(),
    ];
    let beta_scale = if allow_neg_eigval { 2.0 } else { 1.0 };
    let mut outputs = bridge::apply(
        &GATED_DELTA_RULE,
        &[scale, beta_scale],
        &[
            &inputs[0],
            &inputs[1],
            &inputs[2],
            &inputs[3],
            &inputs[4],
            &parameters[0],
            &parameters[1],
            &varlen.cu_seqlens,
            &varlen.chunk_indices,
            &varlen.chunk_offsets,
        ],
    )?;
    Ok(outputs.remove(0).view(shape.as_slice()))
}

/// Whether the build has every kernel the layers of Gated DeltaNet's `config` (one with the decay)
/// need; `Err` names what it lacks.
pub fn check(kernels: &'static Kernels, config: &DeltaRuleConfig) -> Result<(), String> {
    if !config.decay || !config.use_beta {
        return Err("fla's chunk_gated_delta_rule is Gated DeltaNet's (decay and β)".into());
    }
    let shape = DeltaShape::of_layer(
        config.num_heads,
        config.head_k_dim,
        config.head_v_dim,
        Family::Gated,
    );
    super::common::check(kernels, &shape)?;
    beta_kernel(kernels, "fused_beta_sigmoid_fwd_kernel")?;
    beta_kernel(kernels, "fused_beta_sigmoid_bwd_kernel")?;
    gate_cumsum_kernel(kernels, &shape)?;
    kkt_solve_kernel(kernels, &shape)?;
    for name in [
        "ops.gated_delta_rule.wy_fast.recompute_w_u_fwd_kernel",
        "ops.gated_delta_rule.wy_fast.prepare_wy_repr_bwd_kernel",
    ] {
        shape.find(kernels, name, &[shape.use_g()])?;
    }
    reverse_cumsum_kernel(kernels, &shape)?;
    gate_grad_kernel(kernels, &shape)?;
    Ok(())
}

static GATED_DELTA_RULE: Function = Function {
    name: "fla chunk_gated_delta_rule",
    forward,
    backward,
};

fn forward(scalars: &[f64], inputs: &[Tensor]) -> Result<Forward, String> {
    let kernels = Kernels::installed()?;
    let [q, k, v, a, b, a_log, dt_bias, varlen @ ..] = inputs else {
        return Err("ten inputs".into());
    };
    let shape = DeltaShape::of(k, v, varlen, Family::Gated);
    let (q, q_rstd) = l2norm_forward(kernels, q)?;
    let (k, k_rstd) = l2norm_forward(kernels, k)?;
    let beta = beta_forward(kernels, b, scalars[1])?;
    let g = gate_cumsum(kernels, &shape, [a, a_log, dt_bias], varlen)?;
    let wy = wy_matrix(kernels, &shape, [&k, &g, &beta], varlen)?;
    let (w, u) = recompute_w_u(kernels, &shape, [&k, v, &beta, &wy, &g], varlen)?;
    let (h, v_new) = state_pass(kernels, &shape, [&k, &w, &u], Some(&g), varlen)?;
    let o = output_pass(
        kernels,
        &shape,
        scalars[0],
        [&q, &k, &v_new, &h],
        Some(&g),
        varlen,
    )?;
    let mut saved = vec![
        q,
        q_rstd,
        k,
        k_rstd,
        v.shallow_clone(),
        g,
        b.shallow_clone(),
        beta,
        wy,
        a.shallow_clone(),
        a_log.shallow_clone(),
        dt_bias.shallow_clone(),
    ];
    saved.extend(varlen.iter().map(Tensor::shallow_clone));
    Ok(Forward {
        outputs: vec![o],
        saved,
    })
}

fn backward(
    scalars: &[f64],
    saved: &[Tensor],
    grads: &[Tensor],
) -> Result<Vec<Option<Tensor>>, String> {
    let kernels = Kernels::installed()?;
    let [
        q,
        q_rstd,
        k,
        k_rstd,
        v,
        g,
        b,
        beta,
        wy,
        a,
        a_log,
        dt_bias,
        varlen @ ..,
    ] = saved
    else {
        return Err("fifteen saved tensors".into());
    };
    let scale = scalars[0];
    let shape = DeltaShape::of(k, v, varlen, Family::Gated);
    let d_o = grads[0].to_kind(Kind::BFloat16).contiguous();
    let (w, u) = recompute_w_u(kernels, &shape, [k, v, beta, wy, g], varlen)?;
    let (h, v_new) = state_pass(kernels, &shape, [k, &w, &u], Some(g), varlen)?;
    let dv_local = local_value_grad(kernels, &shape, scale, [q, k, &d_o], Some(g), varlen)?;
    let (dh, dv) = state_grad(
        kernels,
        &shape,
        scale,
        [q, k, &w, &d_o, &dv_local],
        Some(g),
        varlen,
    )?;
    let (dq, mut dk, dw, dg) = qkw_grad(
        kernels,
        &shape,
        scale,
        [q, k, &v_new, &h, &d_o, &dh, &dv],
        Some(g),
        varlen,
    )?;
    let mut dg = dg.ok_or("chunk_bwd_dqkwg gave no gate gradient")?;
    let (dk2, dv, db, dg2) = wy_grad(kernels, &shape, [k, v, beta, g, wy, &dw, &dv], varlen)?;
    let _ = dk.f_add_(&dk2).map_err(|e| e.to_string())?;
    let _ = dg.f_add_(&dg2).map_err(|e| e.to_string())?;
    let dg = reverse_cumsum(kernels, &shape, &dg, varlen)?;
    let (da, da_log, ddt_bias) = gate_grad(kernels, &shape, [a, a_log, dt_bias, &dg])?;
    let dq = l2norm_backward(kernels, q, q_rstd, &dq)?;
    let dk = l2norm_backward(kernels, k, k_rstd, &dk)?;
    let db = beta_backward(kernels, b, &db, scalars[1])?;
    Ok(vec![
        Some(dq),
        Some(dk),
        Some(dv),
        Some(da),
        Some(db),
        Some(da_log),
        Some(ddt_bias),
        None,
        None,
        None,
    ])
}

fn beta_kernel(kernels: &'static Kernels, name: &str) -> Result<Variant<'static>, String> {
    kernels.find(
        &format!("ops.common.gate.{name}"),
        &[("BLOCK_SIZE", json!(BETA_BLOCK))],
    )
}

fn gate_cumsum_kernel(
    kernels: &'static Kernels,
    shape: &DeltaShape,
) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.gated_delta_rule.gate.gdn_gate_chunk_cumsum_scalar_kernel",
        &[
            ("H", json!(shape.heads)),
            ("BT", json!(CHUNK)),
            ("REVERSE", json!(false)),
            ("HAS_BIAS", json!(true)),
            ("HAS_SCALE", json!(true)),
            ("IS_VARLEN", json!(true)),
        ],
    )
}

fn kkt_solve_kernel(
    kernels: &'static Kernels,
    shape: &DeltaShape,
) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.gated_delta_rule.chunk_fwd.chunk_gated_delta_rule_fwd_kkt_solve_kernel",
        &[
            ("H", json!(shape.heads)),
            ("HV", json!(shape.heads)),
            ("K", json!(shape.k)),
            ("BT", json!(CHUNK)),
            ("BC", json!(16)),
            shape.use_g(),
        ],
    )
}

fn reverse_cumsum_kernel(
    kernels: &'static Kernels,
    shape: &DeltaShape,
) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.utils.cumsum.chunk_local_cumsum_scalar_kernel",
        &[
            ("B", json!(1)),
            ("H", json!(shape.heads)),
            ("BT", json!(CHUNK)),
            ("REVERSE", json!(true)),
            ("HAS_SCALE", json!(false)),
            ("IS_VARLEN", json!(true)),
        ],
    )
}

fn gate_grad_kernel(
    kernels: &'static Kernels,
    shape: &DeltaShape,
) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.gated_delta_rule.gate.gdn_gate_bwd_kernel",
        &[
            ("H", json!(shape.heads)),
            ("BT", json!(GATE_BWD_BLOCK)),
            ("HAS_BIAS", json!(true)),
        ],
    )
}

/// `scale · sigmoid(b)` in fp32 (fla's `fused_beta_sigmoid_fwd`).
fn beta_forward(kernels: &'static Kernels, b: &Tensor, scale: f64) -> Result<Tensor, String> {
    let variant = beta_kernel(kernels, "fused_beta_sigmoid_fwd_kernel")?;
    let beta = Tensor::empty(b.size(), (Kind::Float, b.device()));
    let n = elements(b);
    #[allow(clippy::cast_possible_truncation)] // 1 or 2
    variant.launch(
        [cdiv(n, variant.constexpr("BLOCK_SIZE")?), 1, 1],
        &[
            ("x", tensor(b)),
            ("y", tensor(&beta)),
            ("scale", Arg::F32(scale as f32)),
            ("n_elements", int(n)?),
        ],
    )?;
    Ok(beta)
}

/// The gradient of `b` from β's (fla's `fused_beta_sigmoid_bwd`), in `b`'s kind.
fn beta_backward(
    kernels: &'static Kernels,
    b: &Tensor,
    d_beta: &Tensor,
    scale: f64,
) -> Result<Tensor, String> {
    let variant = beta_kernel(kernels, "fused_beta_sigmoid_bwd_kernel")?;
    let db = b.empty_like();
    let n = elements(b);
    #[allow(clippy::cast_possible_truncation)]
    variant.launch(
        [cdiv(n, variant.constexpr("BLOCK_SIZE")?), 1, 1],
        &[
            ("x", tensor(b)),
            ("dy", tensor(d_beta)),
            ("dx", tensor(&db)),
            ("scale", Arg::F32(scale as f32)),
            ("n_elements", int(n)?),
        ],
    )?;
    Ok(db)
}

/// The decay `−exp(A_log) · softplus(a + dt_bias)` summed within each chunk, times [`RCP_LN2`]:
/// `g` `[1, T, H]` fp32 in log2 units (fla's `gdn_gate_chunk_cumsum`).
fn gate_cumsum(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    [a, a_log, dt_bias]: [&Tensor; 3],
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let g = Tensor::empty(a.size(), (Kind::Float, a.device()));
    gate_cumsum_kernel(kernels, shape)?.launch(
        [shape.chunks, shape.heads, 1],
        &with(
            vec![
                ("g", tensor(a)),
                ("A_log", tensor(a_log)),
                ("dt_bias", tensor(dt_bias)),
                ("o", tensor(&g)),
                ("scale", Arg::F32(RCP_LN2)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok(g)
}

/// `(I + β K Kᵀ decayed, strictly lower)⁻¹` per chunk, `[1, T, H, 64]` bf16, in one kernel (fla's
/// `chunk_gated_delta_rule_fwd_intra` for chunks of 64: `A` zeroed, then the fused `kkt_solve`).
fn wy_matrix(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    [k, g, beta]: [&Tensor; 3],
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let a = Tensor::zeros(
        [1, shape.tokens, shape.heads, CHUNK],
        (Kind::BFloat16, k.device()),
    );
    kkt_solve_kernel(kernels, shape)?.launch(
        [shape.chunks, shape.heads, 1],
        &with(
            vec![
                ("k", tensor(k)),
                ("g", tensor(g)),
                ("beta", tensor(beta)),
                ("A", tensor(&a)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok(a)
}

/// `w = A β exp(g) K` and `u = A β V` (fla's gated `recompute_w_u_fwd`).
fn recompute_w_u(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    [k, v, beta, a, g]: [&Tensor; 5],
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor), String> {
    let (w, u) = (k.empty_like(), v.empty_like());
    shape
        .find(
            kernels,
            "ops.gated_delta_rule.wy_fast.recompute_w_u_fwd_kernel",
            &[shape.use_g()],
        )?
        .launch(
            [shape.chunks, shape.heads, 1],
            &with(
                vec![
                    ("k", tensor(k)),
                    ("v", tensor(v)),
                    ("beta", tensor(beta)),
                    ("w", tensor(&w)),
                    ("u", tensor(&u)),
                    ("A", tensor(a)),
                    ("g", tensor(g)),
                    ("T", int(shape.tokens)?),
                ],
                chunk_args(varlen),
            ),
        )?;
    Ok((w, u))
}

/// Through the WY representation: k's second gradient, v's, β's (fp32) and the gate's second (fp32)
/// (fla's gated `prepare_wy_repr_bwd`).
fn wy_grad(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    [k, v, beta, g, a, dw, du]: [&Tensor; 7],
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor, Tensor, Tensor), String> {
    let (dk, dv) = (k.empty_like(), v.empty_like());
    let (db, dg) = (beta.empty_like(), g.empty_like());
    shape
        .find(
            kernels,
            "ops.gated_delta_rule.wy_fast.prepare_wy_repr_bwd_kernel",
            &[shape.use_g()],
        )?
        .launch(
            [shape.chunks, shape.heads, 1],
            &with(
                vec![
                    ("k", tensor(k)),
                    ("v", tensor(v)),
                    ("beta", tensor(beta)),
                    ("g", tensor(g)),
                    ("A", tensor(a)),
                    ("dw", tensor(dw)),
                    ("du", tensor(du)),
                    ("dk", tensor(&dk)),
                    ("dv", tensor(&dv)),
                    ("db", tensor(&db)),
                    ("dg", tensor(&dg)),
                    ("T", int(shape.tokens)?),
                ],
                chunk_args(varlen),
            ),
        )?;
    Ok((dk, dv, db, dg))
}

/// The sums of `dg` from each token to its chunk's end, fp32 (fla's `chunk_local_cumsum(…,
/// reverse=True)`): the gradient of the decay before its chunk-local cumulative sum.
fn reverse_cumsum(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    dg: &Tensor,
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let sums = dg.empty_like();
    reverse_cumsum_kernel(kernels, shape)?.launch(
        [shape.chunks * shape.heads, 1, 1],
        &with(
            vec![
                ("s", tensor(dg)),
                ("o", tensor(&sums)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok(sums)
}

/// Through the decay `−exp(A_log) · softplus(a + dt_bias)` from its gradient `dg`: the gradients of
/// `a` (in its kind), `A_log` and `dt_bias` (fp32 `[H]`, the kernel's per-block partial sums summed, as
/// fla's `gdn_gate_bwd` does).
fn gate_grad(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    [a, a_log, dt_bias, dg]: [&Tensor; 4],
) -> Result<(Tensor, Tensor, Tensor), String> {
    let variant = gate_grad_kernel(kernels, shape)?;
    let tokens = elements(a) / shape.heads;
    let blocks = cdiv(tokens, variant.constexpr("BT")?);
    let da = a.empty_like();
    let partial = || Tensor::empty([blocks, shape.heads], (Kind::Float, a.device()));
    let (da_log, ddt_bias) = (partial(), partial());
    variant.launch(
        [blocks, shape.heads, 1],
        &[
            ("g", tensor(a)),
            ("A_log", tensor(a_log)),
            ("dt_bias", tensor(dt_bias)),
            ("dyg", tensor(dg)),
            ("dg", tensor(&da)),
            ("dA", tensor(&da_log)),
            ("dbias", tensor(&ddt_bias)),
            ("T", int(tokens)?),
        ],
    )?;
    let sum = |partial: &Tensor, like: &Tensor| {
        partial
            .sum_dim_intlist(0, false, Kind::Float)
            .view_as(like)
            .to_kind(like.kind())
    };
    Ok((da, sum(&da_log, a_log), sum(&ddt_bias, dt_bias)))
}

/// The elements of `x`.
fn elements(x: &Tensor) -> i64 {
    x.size().iter().product()
}

#[cfg(test)]
mod tests {
    use super::RCP_LN2;

    #[test]
    fn the_gates_log2_scale_is_flas_fp32_constant() {
        assert_eq!(RCP_LN2.to_bits(), 0x3FB8_AA3B);
        #[allow(clippy::cast_possible_truncation)] // fla's literal, as Triton passes it: fp32
        let fla = 1.442_695_021_6_f64 as f32;
        assert_eq!(fla.to_bits(), RCP_LN2.to_bits());
    }
}
