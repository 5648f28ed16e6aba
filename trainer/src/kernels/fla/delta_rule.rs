//! DeltaNet's token mixing as fla 0.6.0's `chunk_delta_rule(…, use_qk_l2norm_in_kernel=True)` computes
//! it (`fla/ops/delta_rule/chunk.py`), kernel for kernel: q and k L2-normalised; the WY representation
//! (`A = (I + tril(β K Kᵀ, −1))⁻¹`, `w = A β K`, `u = A β V`); the sequential state pass over chunks
//! (`h`, and `v_new = u − w h`); the parallel output pass. The backward pass recomputes `w`, `u` and
//! `h` instead of keeping them, as fla does.

// The math's own names (q, k, v, w, u, h, a) read better here than longer ones.
#![allow(clippy::many_single_char_names)]

use serde_json::json;
use tch::{Kind, Tensor};

use super::common::{
    CHUNK, DeltaShape, Family, chunk_args, l2norm_backward, l2norm_forward, local_value_grad,
    output_pass, qkw_grad, state_grad, state_pass, tensor, with,
};
use super::{Varlen, flat, int};
use crate::config::DeltaRuleConfig;
use crate::kernels::cubin::{Kernels, Variant};
use crate::shim::kernels::{self as bridge, Forward, Function};

/// DeltaNet's mixing of `q`, `k` (`[B, T, H, K]`, before their L2 norm), `v` (`[B, T, H, V]`) and
/// `beta` (`[B, T, H]`) over `varlen`'s documents: `[B, T, H, V]` in bf16.
pub fn chunk_delta_rule(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: &Tensor,
    scale: f64,
    varlen: &Varlen,
) -> Result<Tensor, String> {
    let shape = v.size();
    let inputs = [flat(q), flat(k), flat(v), flat(beta)];
    let mut outputs = bridge::apply(
        &DELTA_RULE,
        &[scale],
        &[
            &inputs[0],
            &inputs[1],
            &inputs[2],
            &inputs[3],
            &varlen.cu_seqlens,
            &varlen.chunk_indices,
            &varlen.chunk_offsets,
        ],
    )?;
    Ok(outputs.remove(0).view(shape.as_slice()))
}

/// Whether the build has every kernel `config`'s layers need; `Err` names what it lacks. Gated
/// DeltaNet's configs (`decay`) are [`super::gated_delta_rule::check`]'s.
pub fn check(kernels: &'static Kernels, config: &DeltaRuleConfig) -> Result<(), String> {
    if config.decay {
        return super::gated_delta_rule::check(kernels, config);
    }
    let shape = DeltaShape::of_layer(
        config.num_heads,
        config.head_k_dim,
        config.head_v_dim,
        Family::Delta,
    );
    super::common::check(kernels, &shape)?;
    kkt_kernel(kernels, &shape)?;
    tril_kernel(kernels, &shape)?;
    for name in [
        "ops.delta_rule.wy_fast.recompute_w_u_fwd_kernel",
        "ops.delta_rule.wy_fast.prepare_wy_repr_bwd_kernel",
    ] {
        shape.find(kernels, name, &[])?;
    }
    Ok(())
}

static DELTA_RULE: Function = Function {
    name: "fla chunk_delta_rule",
    forward,
    backward,
};

fn forward(scalars: &[f64], inputs: &[Tensor]) -> Result<Forward, String> {
    let kernels = Kernels::installed()?;
    let [q, k, v, beta, varlen @ ..] = inputs else {
        return Err("seven inputs".into());
    };
    let shape = DeltaShape::of(k, v, varlen, Family::Delta);
    let (q, q_rstd) = l2norm_forward(kernels, q)?;
    let (k, k_rstd) = l2norm_forward(kernels, k)?;
    let a = wy_matrix(kernels, &shape, &k, beta, varlen)?;
    let (w, u) = recompute_w_u(kernels, &shape, &k, v, beta, &a, varlen)?;
    let (h, v_new) = state_pass(kernels, &shape, [&k, &w, &u], None, varlen)?;
    let o = output_pass(
        kernels,
        &shape,
        scalars[0],
        [&q, &k, &v_new, &h],
        None,
        varlen,
    )?;
    let mut saved = vec![
        q,
        q_rstd,
        k,
        k_rstd,
        v.shallow_clone(),
        beta.shallow_clone(),
        a,
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
    let [q, q_rstd, k, k_rstd, v, beta, a, varlen @ ..] = saved else {
        return Err("ten saved tensors".into());
    };
    let scale = scalars[0];
    let shape = DeltaShape::of(k, v, varlen, Family::Delta);
    let d_o = grads[0].to_kind(Kind::BFloat16).contiguous();
    let (w, u) = recompute_w_u(kernels, &shape, k, v, beta, a, varlen)?;
    let (h, v_new) = state_pass(kernels, &shape, [k, &w, &u], None, varlen)?;
    let dv_local = local_value_grad(kernels, &shape, scale, [q, k, &d_o], None, varlen)?;
    let (dh, dv) = state_grad(
        kernels,
        &shape,
        scale,
        [q, k, &w, &d_o, &dv_local],
        None,
        varlen,
    )?;
    let (dq, mut dk, dw, _) = qkw_grad(
        kernels,
        &shape,
        scale,
        [q, k, &v_new, &h, &d_o, &dh, &dv],
        None,
        varlen,
    )?;
    let (dk2, dv, dbeta) = wy_grad(kernels, &shape, [k, v, beta, a, &dw, &dv], varlen)?;
    let _ = dk.f_add_(&dk2).map_err(|e| e.to_string())?;
    let dq = l2norm_backward(kernels, q, q_rstd, &dq)?;
    let dk = l2norm_backward(kernels, k, k_rstd, &dk)?;
    Ok(vec![
        Some(dq),
        Some(dk),
        Some(dv),
        Some(dbeta),
        None,
        None,
        None,
    ])
}

fn kkt_kernel(kernels: &'static Kernels, shape: &DeltaShape) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.common.chunk_scaled_dot_kkt.chunk_scaled_dot_kkt_fwd_kernel",
        &[
            ("H", json!(shape.heads)),
            ("K", json!(shape.k)),
            ("BT", json!(CHUNK)),
            ("g", json!(null)),
        ],
    )
}

fn tril_kernel(kernels: &'static Kernels, shape: &DeltaShape) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.utils.solve_tril.merge_16x16_to_64x64_inverse_kernel",
        &[("H", json!(shape.heads)), ("BT", json!(CHUNK))],
    )
}

/// `(I + tril(β K Kᵀ, −1))⁻¹` per chunk, `[1, T, H, 64]` bf16 (fla's `chunk_scaled_dot_kkt_fwd`
/// in fp32, then `solve_tril`).
fn wy_matrix(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    k: &Tensor,
    beta: &Tensor,
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let grid = [shape.chunks, shape.heads, 1];
    let kkt = Tensor::empty(
        [1, shape.tokens, shape.heads, CHUNK],
        (Kind::Float, k.device()),
    );
    kkt_kernel(kernels, shape)?.launch(
        grid,
        &with(
            vec![
                ("k", tensor(k)),
                ("beta", tensor(beta)),
                ("A", tensor(&kkt)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    let a = Tensor::zeros(
        [1, shape.tokens, shape.heads, CHUNK],
        (Kind::BFloat16, k.device()),
    );
    tril_kernel(kernels, shape)?.launch(
        grid,
        &with(
            vec![
                ("A", tensor(&kkt)),
                ("Ai", tensor(&a)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok(a)
}

/// `w = A β K` and `u = A β V`.
fn recompute_w_u(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    k: &Tensor,
    v: &Tensor,
    beta: &Tensor,
    a: &Tensor,
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor), String> {
    let (w, u) = (k.empty_like(), v.empty_like());
    shape
        .find(
            kernels,
            "ops.delta_rule.wy_fast.recompute_w_u_fwd_kernel",
            &[],
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
                    ("T", int(shape.tokens)?),
                ],
                chunk_args(varlen),
            ),
        )?;
    Ok((w, u))
}

/// Through the WY representation: k's second gradient, v's and β's.
fn wy_grad(
    kernels: &'static Kernels,
    shape: &DeltaShape,
    [k, v, beta, a, dw, du]: [&Tensor; 6],
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor, Tensor), String> {
    let (dk, dv, dbeta) = (k.empty_like(), v.empty_like(), beta.empty_like());
    shape
        .find(
            kernels,
            "ops.delta_rule.wy_fast.prepare_wy_repr_bwd_kernel",
            &[],
        )?
        .launch(
            [shape.chunks, shape.heads, 1],
            &with(
                vec![
                    ("k", tensor(k)),
                    ("v", tensor(v)),
                    ("beta", tensor(beta)),
                    ("A", tensor(a)),
                    ("dw", tensor(dw)),
                    ("du", tensor(du)),
                    ("dk", tensor(&dk)),
                    ("dv", tensor(&dv)),
                    ("dbeta", tensor(&dbeta)),
                    ("T", int(shape.tokens)?),
                ],
                chunk_args(varlen),
            ),
        )?;
    Ok((dk, dv, dbeta))
}
