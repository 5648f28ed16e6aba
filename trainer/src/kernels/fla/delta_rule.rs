//! DeltaNet's token mixing as fla 0.6.0's `chunk_delta_rule(…, use_qk_l2norm_in_kernel=True)` computes
//! it (`fla/ops/delta_rule/chunk.py`), kernel for kernel: q and k L2-normalised; the WY representation
//! (`A = (I + tril(β K Kᵀ, −1))⁻¹`, `w = A β K`, `u = A β V`); the sequential state pass over chunks
//! (`h`, and `v_new = u − w h`); the parallel output pass. The backward pass recomputes `w`, `u` and
//! `h` instead of keeping them, as fla does.

// The math's own names (q, k, v, w, u, h, a) read better here than longer ones.
#![allow(clippy::many_single_char_names)]

use serde_json::json;
use tch::{Kind, Tensor};

use super::{Shape, Varlen, cdiv, chunk_args, flat, int, next_power_of_2, tensor, with};
use crate::config::DeltaRuleConfig;
use crate::kernels::cubin::{Arg, Kernels, Variant};
use crate::shim::kernels::{self as bridge, Forward, Function};

/// fla's `l2norm_fwd`/`l2norm_bwd` epsilon.
const L2_EPS: f32 = 1e-6;
/// Tokens per chunk (`BT`).
const CHUNK: i64 = 64;

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

/// Whether the build has every kernel `config`'s layers need; `Err` names what it lacks.
pub fn check(kernels: &'static Kernels, config: &DeltaRuleConfig) -> Result<(), String> {
    if config.decay {
        return Err("Gated DeltaNet has no fla kernels in flame-train yet".into());
    }
    let shape = Shape {
        tokens: 0,
        heads: i64::from(config.num_heads),
        k: i64::from(config.head_k_dim),
        v: i64::from(config.head_v_dim),
        documents: 0,
        chunks: 0,
    };
    let probe = Tensor::empty(
        [1, 1, shape.heads, shape.k],
        (Kind::BFloat16, tch::Device::Cpu),
    );
    l2norm_kernel(kernels, &probe, "l2norm_fwd_kernel")?;
    l2norm_kernel(kernels, &probe, "l2norm_bwd_kernel")?;
    kkt_kernel(kernels, &shape)?;
    tril_kernel(kernels, &shape)?;
    for name in [
        "ops.delta_rule.wy_fast.recompute_w_u_fwd_kernel",
        "ops.common.chunk_o.chunk_fwd_kernel_o",
        "ops.common.chunk_o.chunk_bwd_kernel_dv_local",
        "ops.delta_rule.wy_fast.prepare_wy_repr_bwd_kernel",
    ] {
        shape.find(kernels, name)?;
    }
    state_kernel(
        kernels,
        &shape,
        "chunk_gated_delta_rule_fwd_kernel_h_blockdim64",
    )?;
    state_kernel(
        kernels,
        &shape,
        "chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64",
    )?;
    qkw_kernel(kernels, &shape)?;
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
    let shape = Shape::of(k, v, varlen);
    let (q, q_rstd) = l2norm_forward(kernels, q)?;
    let (k, k_rstd) = l2norm_forward(kernels, k)?;
    let a = wy_matrix(kernels, &shape, &k, beta, varlen)?;
    let (w, u) = recompute_w_u(kernels, &shape, &k, v, beta, &a, varlen)?;
    let (h, v_new) = state_pass(kernels, &shape, &k, &w, &u, varlen)?;
    let o = output_pass(kernels, &shape, scalars[0], [&q, &k, &v_new, &h], varlen)?;
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
    let shape = Shape::of(k, v, varlen);
    let d_o = grads[0].to_kind(Kind::BFloat16).contiguous();
    let (w, u) = recompute_w_u(kernels, &shape, k, v, beta, a, varlen)?;
    let (h, v_new) = state_pass(kernels, &shape, k, &w, &u, varlen)?;
    let dv_local = local_value_grad(kernels, &shape, scale, [q, k, &d_o], varlen)?;
    let (dh, dv) = state_grad(kernels, &shape, scale, [q, k, &w, &d_o, &dv_local], varlen)?;
    let (dq, mut dk, dw) = qkw_grad(
        kernels,
        &shape,
        scale,
        [q, k, &v_new, &h, &d_o, &dh, &dv],
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

/// Rows of `[…, D]` as the L2-norm kernels see them, and their variant (the `NB` constexpr only
/// buckets autotuning in fla: any build of this `D` computes the same).
fn l2norm_kernel(
    kernels: &'static Kernels,
    x: &Tensor,
    name: &str,
) -> Result<(i64, Variant<'static>), String> {
    let d = *x.size().last().expect("a feature dimension");
    let rows = x.size().iter().product::<i64>() / d;
    let kernel = format!("modules.norm.l2norm.{name}");
    let spec = [("D", json!(d)), ("BD", json!(next_power_of_2(d)))];
    let variant = kernels
        .find(
            &kernel,
            &[
                spec[0].clone(),
                spec[1].clone(),
                ("NB", json!(cdiv(rows, 2048 * 32))),
            ],
        )
        .or_else(|_| kernels.find_first(&kernel, &spec))?;
    Ok((rows, variant))
}

/// `x / ‖x‖` over the last dimension, and `1 / ‖x‖` (fp32) per row.
fn l2norm_forward(kernels: &'static Kernels, x: &Tensor) -> Result<(Tensor, Tensor), String> {
    let (rows, variant) = l2norm_kernel(kernels, x, "l2norm_fwd_kernel")?;
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

/// The gradient of the L2 norm's input from its output `y`, `rstd` and the output's gradient.
fn l2norm_backward(
    kernels: &'static Kernels,
    y: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<Tensor, String> {
    let (rows, variant) = l2norm_kernel(kernels, y, "l2norm_bwd_kernel")?;
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

fn kkt_kernel(kernels: &'static Kernels, shape: &Shape) -> Result<Variant<'static>, String> {
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

fn tril_kernel(kernels: &'static Kernels, shape: &Shape) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.utils.solve_tril.merge_16x16_to_64x64_inverse_kernel",
        &[("H", json!(shape.heads)), ("BT", json!(CHUNK))],
    )
}

fn qkw_kernel(kernels: &'static Kernels, shape: &Shape) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.common.chunk_o.chunk_bwd_kernel_dqkwg",
        &[
            ("H", json!(shape.heads)),
            ("K", json!(shape.k)),
            ("V", json!(shape.v)),
            ("USE_G", json!(false)),
            ("B", json!(1)),
        ],
    )
}

/// `(I + tril(β K Kᵀ, −1))⁻¹` per chunk, `[1, T, H, 64]` bf16 (fla's `chunk_scaled_dot_kkt_fwd`
/// in fp32, then `solve_tril`).
fn wy_matrix(
    kernels: &'static Kernels,
    shape: &Shape,
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
    shape: &Shape,
    k: &Tensor,
    v: &Tensor,
    beta: &Tensor,
    a: &Tensor,
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor), String> {
    let (w, u) = (k.empty_like(), v.empty_like());
    shape
        .find(kernels, "ops.delta_rule.wy_fast.recompute_w_u_fwd_kernel")?
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

fn state_kernel(
    kernels: &'static Kernels,
    shape: &Shape,
    name: &str,
) -> Result<Variant<'static>, String> {
    kernels.find(
        &format!("ops.common.chunk_delta_h.{name}"),
        &[
            ("H", json!(shape.heads)),
            ("K", json!(shape.k)),
            ("V", json!(shape.v)),
            ("USE_G", json!(false)),
            ("STATE_V_FIRST", json!(false)),
        ],
    )
}

/// The state before every chunk, `h` `[1, NT, H, K, V]` bf16, and `v_new = u − w h`.
fn state_pass(
    kernels: &'static Kernels,
    shape: &Shape,
    k: &Tensor,
    w: &Tensor,
    u: &Tensor,
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor), String> {
    let variant = state_kernel(
        kernels,
        shape,
        "chunk_gated_delta_rule_fwd_kernel_h_blockdim64",
    )?;
    let h = Tensor::empty(
        [1, shape.chunks, shape.heads, shape.k, shape.v],
        (Kind::BFloat16, k.device()),
    );
    let v_new = u.empty_like();
    variant.launch(
        [
            cdiv(shape.v, variant.constexpr("BV")?) * shape.documents * shape.heads,
            1,
            1,
        ],
        &[
            ("k", tensor(k)),
            ("v", tensor(u)),
            ("w", tensor(w)),
            ("v_new", tensor(&v_new)),
            ("h", tensor(&h)),
            ("cu_seqlens", tensor(&varlen[0])),
            ("chunk_offsets", tensor(&varlen[2])),
            ("T", int(shape.tokens)?),
        ],
    )?;
    Ok((h, v_new))
}

/// `o = scale · (q h + tril(q kᵀ) v_new)` per chunk.
fn output_pass(
    kernels: &'static Kernels,
    shape: &Shape,
    scale: f64,
    [q, k, v_new, h]: [&Tensor; 4],
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let variant = shape.find(kernels, "ops.common.chunk_o.chunk_fwd_kernel_o")?;
    let o = v_new.empty_like();
    #[allow(clippy::cast_possible_truncation)] // fla passes the scale as fp32
    variant.launch(
        [
            cdiv(shape.v, variant.constexpr("BV")?) * shape.chunks,
            shape.heads,
            1,
        ],
        &with(
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
    )?;
    Ok(o)
}

/// The values' gradient from within their own chunk: `scale · tril(q kᵀ)ᵀ do`.
fn local_value_grad(
    kernels: &'static Kernels,
    shape: &Shape,
    scale: f64,
    [q, k, d_o]: [&Tensor; 3],
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let dv = d_o.empty_like();
    #[allow(clippy::cast_possible_truncation)]
    shape
        .find(kernels, "ops.common.chunk_o.chunk_bwd_kernel_dv_local")?
        .launch(
            [shape.chunks, shape.heads, 1],
            &with(
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
        )?;
    Ok(dv)
}

/// The states' gradients `dh` (backwards over chunks) and the values' full gradient.
fn state_grad(
    kernels: &'static Kernels,
    shape: &Shape,
    scale: f64,
    [q, k, w, d_o, dv]: [&Tensor; 5],
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor), String> {
    let variant = state_kernel(
        kernels,
        shape,
        "chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64",
    )?;
    let dh = Tensor::empty(
        [1, shape.chunks, shape.heads, shape.k, shape.v],
        (Kind::BFloat16, q.device()),
    );
    let dv2 = dv.empty_like();
    #[allow(clippy::cast_possible_truncation)]
    variant.launch(
        [
            cdiv(shape.v, variant.constexpr("BV")?) * shape.documents * shape.heads,
            1,
            1,
        ],
        &[
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
    )?;
    Ok((dh, dv2))
}

/// The gradients of q, k (through the states and the chunk) and w.
fn qkw_grad(
    kernels: &'static Kernels,
    shape: &Shape,
    scale: f64,
    [q, k, v_new, h, d_o, dh, dv]: [&Tensor; 7],
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor, Tensor), String> {
    let variant = qkw_kernel(kernels, shape)?;
    let (dq, dk, dw) = (q.empty_like(), k.empty_like(), k.empty_like());
    #[allow(clippy::cast_possible_truncation)]
    variant.launch(
        [
            cdiv(shape.k, variant.constexpr("BK")?) * shape.chunks,
            shape.heads,
            1,
        ],
        &with(
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
    )?;
    Ok((dq, dk, dw))
}

/// Through the WY representation: k's second gradient, v's and β's.
fn wy_grad(
    kernels: &'static Kernels,
    shape: &Shape,
    [k, v, beta, a, dw, du]: [&Tensor; 6],
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor, Tensor), String> {
    let (dk, dv, dbeta) = (k.empty_like(), v.empty_like(), beta.empty_like());
    shape
        .find(kernels, "ops.delta_rule.wy_fast.prepare_wy_repr_bwd_kernel")?
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
