//! GLA's token mixing as fla 0.6.0's `chunk_gla(q, k, v, g, state_v_first=True, cu_seqlens=…)` computes
//! it (`fla/ops/gla/chunk.py`; the call of `fla/layers/gla.py`, scale `1/√K`, a bf16 gate), kernel for
//! kernel: the gates summed within each chunk, in log2 space and fp32 (`chunk_local_cumsum`); the state
//! before every chunk, `[V, K]` in bf16 (`chunk_fwd_h`); the intra-chunk matrix `A` in fp32, its
//! off-diagonal 16×16 blocks and then its diagonal ones; the output `scale · (Q ⊙ 2^G) h + tril(A) V`.
//! The backward pass keeps `A` and recomputes the summed gates and the states (in fp32), as fla does
//! for a bf16 gate.

// The math's own names (q, k, v, g, h, a) read better here than longer ones.
#![allow(clippy::many_single_char_names)]

use serde_json::{Value, json};
use tch::{Kind, Tensor};

use super::common::{chunk_args, tensor, with};
use super::{Shape, Varlen, cdiv, flat, int, next_power_of_2};
use crate::config::GlaConfig;
use crate::kernels::cubin::{Arg, Kernels, Variant};
use crate::shim::kernels::{self as bridge, Forward, Function};

/// Tokens per chunk (`BT`). fla takes `min(64, max(16, next_power_of_2(T)))` of the flattened batch's
/// `T`: 64 from 33 tokens on; below, its smaller chunks change only the rounding.
const CHUNK: i64 = 64;
/// Rows of the intra-chunk matrix's blocks (`BC = min(16, BT)`).
const SUB_CHUNK: i64 = 16;
/// Blocks per chunk (`NC`).
const SUB_CHUNKS: i64 = CHUNK / SUB_CHUNK;
/// The widest keys of fla's one-pass intra-chunk kernel (`K <= 256`; wider ones are split and merged,
/// kernels flame-train does not launch).
const MAX_K: i64 = 256;
/// fla's `RCP_LN2` (1.4426950216), the gates' factor into log2 space, as the kernel gets it: the same
/// fp32 as `LOG2_E`.
const RCP_LN2: f32 = std::f32::consts::LOG2_E;

/// GLA's mixing of `q`, `k` (`[B, T, H, K]`), `v` (`[B, T, H, V]`) and the per-channel log decays `g`
/// (`[B, T, H, K]`, ≤ 0) over `varlen`'s documents, scaled by `scale`: `[B, T, H, V]` in bf16.
pub fn chunk_gla(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    scale: f64,
    varlen: &Varlen,
) -> Result<Tensor, String> {
    let shape = v.size();
    // fla's own asserts: the kernels index every tensor by these sizes.
    if q.dim() != 4
        || v.dim() != 4
        || k.size() != q.size()
        || g.size() != q.size()
        || shape[..3] != q.size()[..3]
    {
        return Err(format!(
            "chunk_gla: q {:?}, k {:?}, g {:?} must be one [B, T, H, K] and v {shape:?} [B, T, H, V]",
            q.size(),
            k.size(),
            g.size()
        ));
    }
    let inputs = [flat(q), flat(k), flat(v), flat(g)];
    let mut outputs = bridge::apply(
        &GLA,
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
pub fn check(kernels: &'static Kernels, config: &GlaConfig) -> Result<(), String> {
    let heads = i64::from(config.num_heads);
    let shape = Shape {
        tokens: 0,
        heads,
        k: i64::from(config.key_dim) / heads,
        v: i64::from(config.value_dim) / heads,
        documents: 0,
        chunks: 0,
    };
    if shape.k > MAX_K {
        return Err(format!(
            "GLA heads of {} key channels need fla's split intra-chunk kernels (K > {MAX_K}), which flame-train does not launch",
            shape.k
        ));
    }
    cumsum_kernel(kernels, &shape)?;
    state_kernel(kernels, &shape, Kind::BFloat16)?;
    state_kernel(kernels, &shape, Kind::Float)?;
    for name in [
        "chunk_gla_fwd_A_kernel_intra_sub_inter",
        "chunk_gla_fwd_A_kernel_intra_sub_intra",
        "chunk_gla_fwd_kernel_o",
        "chunk_gla_bwd_kernel_dv",
        "chunk_gla_bwd_kernel_dA",
        "chunk_gla_bwd_kernel_intra",
        "chunk_gla_bwd_kernel_inter",
    ] {
        gla_kernel(kernels, &shape, name)?;
    }
    state_grad_kernel(kernels, &shape)?;
    Ok(())
}

static GLA: Function = Function {
    name: "fla chunk_gla",
    forward,
    backward,
};

fn forward(scalars: &[f64], inputs: &[Tensor]) -> Result<Forward, String> {
    let kernels = Kernels::installed()?;
    let [q, k, v, g, varlen @ ..] = inputs else {
        return Err("seven inputs".into());
    };
    let scale = scalars[0];
    let shape = Shape::of(k, v, varlen);
    let gates = gate_cumsum(kernels, &shape, g, varlen)?;
    let h = state_pass(kernels, &shape, [k, v, &gates], Kind::BFloat16, varlen)?;
    let a = intra_matrix(kernels, &shape, scale, [q, k, &gates], varlen)?;
    let o = output_pass(kernels, &shape, scale, [q, v, &gates, &h, &a], varlen)?;
    // A bf16 gate is kept and summed again in the backward pass (fla keeps `g_cumsum` only for an
    // fp32 gate).
    let mut saved = vec![
        q.shallow_clone(),
        k.shallow_clone(),
        v.shallow_clone(),
        g.shallow_clone(),
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
    let [q, k, v, g, a, varlen @ ..] = saved else {
        return Err("eight saved tensors".into());
    };
    let scale = scalars[0];
    let shape = Shape::of(k, v, varlen);
    let d_o = grads[0].to_kind(Kind::BFloat16).contiguous();
    let gates = gate_cumsum(kernels, &shape, g, varlen)?;
    let h = state_pass(kernels, &shape, [k, v, &gates], Kind::Float, varlen)?;
    let dh = state_grad(kernels, &shape, scale, [q, &gates, &d_o], varlen)?;
    let dv = value_grad(kernels, &shape, [k, &gates, a, &d_o, &dh], varlen)?;
    let da = matrix_grad(kernels, &shape, scale, [v, &d_o], varlen)?;
    let (dq, dk) = intra_grad(kernels, &shape, [q, k, &gates, &da], varlen)?;
    let (dq, dk, dg) = inter_grad(
        kernels,
        &shape,
        scale,
        [q, k, v, &gates, &h, &d_o, &dh, &dq, &dk],
        varlen,
    )?;
    // fla's `dq.to(q), dk.to(k)`; its fp32 `dg` autograd casts to the gate's dtype.
    Ok(vec![
        Some(dq.to_kind(q.kind())),
        Some(dk.to_kind(k.kind())),
        Some(dv),
        Some(dg.to_kind(g.kind())),
        None,
        None,
        None,
    ])
}

/// An fp32 argument from the op's scale (fla passes Python floats as fp32).
fn fp32(x: f64) -> Arg<'static> {
    #[allow(clippy::cast_possible_truncation)]
    Arg::F32(x as f32)
}

/// The variant of `ops.gla.chunk.<name>` for `shape`, with the block sizes fla's wrapper passes.
fn gla_kernel(
    kernels: &'static Kernels,
    shape: &Shape,
    name: &str,
) -> Result<Variant<'static>, String> {
    let (k, v) = (("K", json!(shape.k)), ("V", json!(shape.v)));
    let (bc, nc) = (("BC", json!(SUB_CHUNK)), ("NC", json!(SUB_CHUNKS)));
    let state_v_first = ("STATE_V_FIRST", json!(true));
    let own: Vec<(&str, Value)> = match name {
        "chunk_gla_fwd_A_kernel_intra_sub_inter" => vec![k, bc, nc],
        "chunk_gla_fwd_A_kernel_intra_sub_intra" => {
            vec![k, bc, ("BK", json!(next_power_of_2(shape.k).max(16)))]
        }
        "chunk_gla_fwd_kernel_o" => vec![
            ("HV", json!(shape.heads)),
            k,
            v,
            state_v_first,
            ("USE_GRAPH", json!(false)),
        ],
        "chunk_gla_bwd_kernel_dv" | "chunk_gla_bwd_kernel_inter" => vec![k, v, state_v_first],
        "chunk_gla_bwd_kernel_dA" => vec![v, ("BV", json!(next_power_of_2(shape.v).min(64)))],
        "chunk_gla_bwd_kernel_intra" => {
            vec![k, bc, ("BK", json!(next_power_of_2(shape.k).min(64))), nc]
        }
        other => return Err(format!("{other} is not one of GLA's kernels")),
    };
    let mut spec = vec![("H", json!(shape.heads)), ("BT", json!(CHUNK))];
    spec.extend(own);
    kernels.find(&format!("ops.gla.chunk.{name}"), &spec)
}

fn cumsum_kernel(kernels: &'static Kernels, shape: &Shape) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.utils.cumsum.chunk_local_cumsum_vector_kernel",
        &[
            ("B", json!(1)),
            ("H", json!(shape.heads)),
            ("S", json!(shape.k)),
            ("BT", json!(CHUNK)),
            ("REVERSE", json!(false)),
            ("HAS_SCALE", json!(true)),
        ],
    )
}

/// `chunk_fwd_kernel_h` with the per-key gate and `[V, K]` states of `kind` (bf16 in the forward
/// pass, fp32 in the backward pass's recomputation: fla's `states_in_fp32`).
fn state_kernel(
    kernels: &'static Kernels,
    shape: &Shape,
    kind: Kind,
) -> Result<Variant<'static>, String> {
    let states = if kind == Kind::Float {
        "*fp32"
    } else {
        "*bf16"
    };
    kernels.find(
        "ops.common.chunk_h.chunk_fwd_kernel_h",
        &[
            ("H", json!(shape.heads)),
            ("K", json!(shape.k)),
            ("V", json!(shape.v)),
            ("BT", json!(CHUNK)),
            ("BS", json!(CHUNK)),
            ("USE_GK", json!(true)),
            ("STATE_V_FIRST", json!(true)),
            ("h", json!(states)),
        ],
    )
}

fn state_grad_kernel(kernels: &'static Kernels, shape: &Shape) -> Result<Variant<'static>, String> {
    kernels.find(
        "ops.common.chunk_h.chunk_bwd_kernel_dh",
        &[
            ("HQ", json!(shape.heads)),
            ("H", json!(shape.heads)),
            ("K", json!(shape.k)),
            ("V", json!(shape.v)),
            ("BT", json!(CHUNK)),
            ("BS", json!(CHUNK)),
            ("NG", json!(1)),
            ("USE_GK", json!(true)),
            ("STATE_V_FIRST", json!(true)),
        ],
    )
}

/// The gates summed within each chunk and turned into log2 space, `[1, T, H, K]` fp32 (fla's
/// `chunk_local_cumsum(g, 64, scale=RCP_LN2)`).
fn gate_cumsum(
    kernels: &'static Kernels,
    shape: &Shape,
    g: &Tensor,
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let variant = cumsum_kernel(kernels, shape)?;
    let gates = Tensor::empty(
        [1, shape.tokens, shape.heads, shape.k],
        (Kind::Float, g.device()),
    );
    variant.launch(
        [
            cdiv(shape.k, variant.constexpr("BS")?) * shape.chunks,
            shape.heads,
            1,
        ],
        &with(
            vec![
                ("s", tensor(g)),
                ("o", tensor(&gates)),
                ("scale", Arg::F32(RCP_LN2)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok(gates)
}

/// The state before every chunk, `h` `[1, NT, H, V, K]` of `kind` (fla's `chunk_fwd_h`).
fn state_pass(
    kernels: &'static Kernels,
    shape: &Shape,
    [k, v, gates]: [&Tensor; 3],
    kind: Kind,
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let variant = state_kernel(kernels, shape, kind)?;
    let h = Tensor::empty(
        [1, shape.chunks, shape.heads, shape.v, shape.k],
        (kind, k.device()),
    );
    variant.launch(
        [
            cdiv(shape.k, variant.constexpr("BK")?)
                * cdiv(shape.v, variant.constexpr("BV")?)
                * shape.documents
                * shape.heads,
            1,
            1,
        ],
        &[
            ("k", tensor(k)),
            ("v", tensor(v)),
            ("h", tensor(&h)),
            ("gk", tensor(gates)),
            ("cu_seqlens", tensor(&varlen[0])),
            ("split_offsets", tensor(&varlen[2])),
            ("T", int(shape.tokens)?),
        ],
    )?;
    Ok(h)
}

/// `A_ij = scale · Σ_c q_ic k_jc 2^(G_ic − G_jc)` for `j ≤ i` in each chunk, `[1, T, H, 64]` fp32 (fla's
/// `chunk_gla_fwd_intra_gk`; the entries above the diagonal are left unwritten, as there).
fn intra_matrix(
    kernels: &'static Kernels,
    shape: &Shape,
    scale: f64,
    [q, k, gates]: [&Tensor; 3],
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let a = Tensor::empty(
        [1, shape.tokens, shape.heads, CHUNK],
        (Kind::Float, q.device()),
    );
    let args = with(
        vec![
            ("q", tensor(q)),
            ("k", tensor(k)),
            ("g", tensor(gates)),
            ("A", tensor(&a)),
            ("scale", fp32(scale)),
            ("T", int(shape.tokens)?),
        ],
        chunk_args(varlen),
    );
    gla_kernel(kernels, shape, "chunk_gla_fwd_A_kernel_intra_sub_inter")?
        .launch([shape.chunks, SUB_CHUNKS * SUB_CHUNKS, shape.heads], &args)?;
    gla_kernel(kernels, shape, "chunk_gla_fwd_A_kernel_intra_sub_intra")?
        .launch([shape.chunks, SUB_CHUNKS, shape.heads], &args)?;
    Ok(a)
}

/// `o = scale · (Q ⊙ 2^G) h + tril(A) V` per chunk, `[1, T, H, V]` bf16 (fla's `chunk_gla_fwd_o_gk`,
/// into zeros).
fn output_pass(
    kernels: &'static Kernels,
    shape: &Shape,
    scale: f64,
    [q, v, gates, h, a]: [&Tensor; 5],
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let variant = gla_kernel(kernels, shape, "chunk_gla_fwd_kernel_o")?;
    let o = v.zeros_like();
    variant.launch(
        [
            cdiv(shape.v, variant.constexpr("BV")?) * shape.chunks,
            shape.heads,
            1,
        ],
        &with(
            vec![
                ("q", tensor(q)),
                ("v", tensor(v)),
                ("g", tensor(gates)),
                ("h", tensor(h)),
                ("o", tensor(&o)),
                ("A", tensor(a)),
                ("scale", fp32(scale)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok(o)
}

/// The states' gradients `dh` `[1, NT, H, V, K]` fp32, backwards over each document's chunks (fla's
/// `chunk_bwd_dh` with `states_in_fp32`).
fn state_grad(
    kernels: &'static Kernels,
    shape: &Shape,
    scale: f64,
    [q, gates, d_o]: [&Tensor; 3],
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let variant = state_grad_kernel(kernels, shape)?;
    let dh = Tensor::empty(
        [1, shape.chunks, shape.heads, shape.v, shape.k],
        (Kind::Float, q.device()),
    );
    variant.launch(
        [
            cdiv(shape.k, variant.constexpr("BK")?)
                * cdiv(shape.v, variant.constexpr("BV")?)
                * shape.documents
                * shape.heads,
            1,
            1,
        ],
        &[
            ("q", tensor(q)),
            ("gk", tensor(gates)),
            ("do", tensor(d_o)),
            ("dh", tensor(&dh)),
            ("cu_seqlens", tensor(&varlen[0])),
            ("split_offsets", tensor(&varlen[2])),
            ("scale", fp32(scale)),
            ("T", int(shape.tokens)?),
        ],
    )?;
    Ok(dh)
}

/// The values' gradient, `tril(A)ᵀ do` plus the states' part, `[1, T, H, V]` bf16 (fla's
/// `chunk_gla_bwd_dv`).
fn value_grad(
    kernels: &'static Kernels,
    shape: &Shape,
    [k, gates, a, d_o, dh]: [&Tensor; 5],
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let variant = gla_kernel(kernels, shape, "chunk_gla_bwd_kernel_dv")?;
    let dv = d_o.empty_like();
    variant.launch(
        [
            cdiv(shape.v, variant.constexpr("BV")?) * shape.chunks,
            shape.heads,
            1,
        ],
        &with(
            vec![
                ("k", tensor(k)),
                ("g", tensor(gates)),
                ("A", tensor(a)),
                ("do", tensor(d_o)),
                ("dh", tensor(dh)),
                ("dv", tensor(&dv)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok(dv)
}

/// The intra-chunk matrix's gradient, `scale · tril(do Vᵀ)`, `[1, T, H, 64]` fp32 (fla's
/// `chunk_gla_bwd_dA`).
fn matrix_grad(
    kernels: &'static Kernels,
    shape: &Shape,
    scale: f64,
    [v, d_o]: [&Tensor; 2],
    varlen: &[Tensor],
) -> Result<Tensor, String> {
    let da = Tensor::empty(
        [1, shape.tokens, shape.heads, CHUNK],
        (Kind::Float, v.device()),
    );
    gla_kernel(kernels, shape, "chunk_gla_bwd_kernel_dA")?.launch(
        [shape.chunks, shape.heads, 1],
        &with(
            vec![
                ("v", tensor(v)),
                ("do", tensor(d_o)),
                ("dA", tensor(&da)),
                ("scale", fp32(scale)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok(da)
}

/// q's and k's gradients through the intra-chunk matrix, fp32 (fla's `chunk_gla_bwd_dqk_intra`).
fn intra_grad(
    kernels: &'static Kernels,
    shape: &Shape,
    [q, k, gates, da]: [&Tensor; 4],
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor), String> {
    let variant = gla_kernel(kernels, shape, "chunk_gla_bwd_kernel_intra")?;
    let dq = Tensor::empty(q.size(), (Kind::Float, q.device()));
    let dk = dq.empty_like();
    variant.launch(
        [
            cdiv(shape.k, variant.constexpr("BK")?) * SUB_CHUNKS * shape.chunks,
            shape.heads,
            1,
        ],
        &with(
            vec![
                ("q", tensor(q)),
                ("k", tensor(k)),
                ("g", tensor(gates)),
                ("dA", tensor(da)),
                ("dq", tensor(&dq)),
                ("dk", tensor(&dk)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok((dq, dk))
}

/// q's and k's whole gradients (the states' part added to `dq`, `dk`) and the gates', fp32 (fla's
/// `chunk_gla_bwd_dqkg`; the kernel sums the gates' gradient back over each chunk itself).
fn inter_grad(
    kernels: &'static Kernels,
    shape: &Shape,
    scale: f64,
    [q, k, v, gates, h, d_o, dh, dq, dk]: [&Tensor; 9],
    varlen: &[Tensor],
) -> Result<(Tensor, Tensor, Tensor), String> {
    let variant = gla_kernel(kernels, shape, "chunk_gla_bwd_kernel_inter")?;
    let (dq2, dk2, dg) = (dq.empty_like(), dk.empty_like(), gates.empty_like());
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
                ("v", tensor(v)),
                ("g", tensor(gates)),
                ("h", tensor(h)),
                ("do", tensor(d_o)),
                ("dh", tensor(dh)),
                ("dq", tensor(dq)),
                ("dk", tensor(dk)),
                ("dq2", tensor(&dq2)),
                ("dk2", tensor(&dk2)),
                ("dg", tensor(&dg)),
                ("scale", fp32(scale)),
                ("T", int(shape.tokens)?),
            ],
            chunk_args(varlen),
        ),
    )?;
    Ok((dq2, dk2, dg))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;
    use tch::{Device, Kind, Tensor};

    use super::{Shape, check, chunk_gla, state_kernel};
    use crate::config::{GlaConfig, Mixer, ModelConfig};
    use crate::kernels::cubin::Kernels;

    /// `testdata/gla_340M.manifest.json`: the entries of `tools/setup-kernels.sh`'s build (fla 0.6.0,
    /// Triton 3.7.1) that `configs/gla_340M.json` runs, those `keep` keeps.
    fn build(keep: impl Fn(&Value) -> bool) -> (tempfile::TempDir, &'static Kernels) {
        let mut manifest: Value =
            serde_json::from_str(include_str!("testdata/gla_340M.manifest.json")).unwrap();
        manifest["kernels"].as_array_mut().unwrap().retain(keep);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        // The lookups hand out variants of a 'static build, as `Kernels::installed` does.
        let kernels = Box::leak(Box::new(Kernels::open(dir.path()).unwrap()));
        (dir, kernels)
    }

    fn gla_340m() -> GlaConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/gla_340M.json");
        let config = ModelConfig::from_json(&std::fs::read_to_string(path).unwrap()).unwrap();
        match config.mixer {
            Mixer::Gla(gla) => gla,
            other => panic!("not GLA: {other:?}"),
        }
    }

    #[test]
    fn every_kernel_of_the_op_is_found_once_in_the_build_for_its_config() {
        let (_dir, kernels) = build(|_| true);
        check(kernels, &gla_340m()).unwrap();
        // The forward pass's bf16 states and the backward pass's fp32 ones: two builds that differ
        // only in the element type of `h`.
        let shape = Shape {
            tokens: 0,
            heads: 4,
            k: 128,
            v: 256,
            documents: 0,
            chunks: 0,
        };
        for (kind, ty) in [(Kind::BFloat16, "*bf16"), (Kind::Float, "*fp32")] {
            let variant = state_kernel(kernels, &shape, kind).unwrap();
            assert_eq!(variant.entry().args[2], ("h".to_owned(), ty.to_owned()));
        }
    }

    #[test]
    fn check_names_the_kernel_the_build_lacks_and_refuses_wide_keys() {
        let (_dir, kernels) = build(|entry| {
            entry["kernel"] != "ops.common.chunk_h.chunk_fwd_kernel_h"
                || entry["args"][2][1] != "*fp32"
        });
        let error = check(kernels, &gla_340m()).unwrap_err();
        assert!(
            error.contains("no build of ops.common.chunk_h.chunk_fwd_kernel_h with")
                && error.contains("h=\"*fp32\""),
            "{error}"
        );
        let mut wide = gla_340m();
        wide.key_dim *= 4;
        let error = check(kernels, &wide).unwrap_err();
        assert!(error.contains("K > 256"), "{error}");
    }

    #[test]
    fn inputs_of_disagreeing_shapes_are_refused_before_any_kernel() {
        let x = |shape: &[i64]| Tensor::zeros(shape, (Kind::BFloat16, Device::Cpu));
        let varlen = super::Varlen::new(&[vec![0, 8]], 8, 64, Device::Cpu);
        let (q, v) = (x(&[1, 8, 2, 16]), x(&[1, 8, 2, 32]));
        for (k, v, g) in [
            (x(&[1, 8, 2, 8]), &v, &q),
            (q.shallow_clone(), &v, &x(&[1, 8, 1, 16])),
            (q.shallow_clone(), &x(&[1, 7, 2, 32]), &q),
        ] {
            let error = chunk_gla(&q, &k, v, g, 0.25, &varlen).unwrap_err();
            assert!(error.contains("must be one [B, T, H, K]"), "{error}");
        }
    }
}
