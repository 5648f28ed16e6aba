//! The delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet): the chunked op and its
//! token-by-token reference.
//!
//! Per head, with a state `S ∈ R^{dk×dv}` that starts at 0 at every document, `g_t ≤ 0` the per-token
//! log decay (Gated DeltaNet; DeltaNet has `g = 0`), `k_t` L2-normalised and `β_t ∈ (0, 1)`:
//! `S'_t = e^{g_t} S_{t−1}`, `v'_t = β_t (v_t − S'_tᵀ k_t)`, `S_t = S'_t + k_t v'_tᵀ`,
//! `o_t = S_tᵀ (q_t · scale)`, i.e. `S_t = e^{g_t} (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ` (fla's
//! `delta_rule_recurrence` and `naive_recurrent_gated_delta_rule`; [`recurrent_delta_rule`]).
//!
//! [`chunk_delta_rule`] computes the same in chunks of `C` tokens laid out by [`ChunkLayout`], with the
//! WY representation. Inside a chunk, `Γ` is the inclusive cumulative sum of `g` (all decays are 1
//! without `g`), `D_ij = e^{Γ_i − Γ_j}`, and `S_n` the state entering the chunk:
//! - `A = tril(diag(β) (K Kᵀ ⊙ D), −1)`, `T = (I + A)⁻¹` (a unit lower triangular solve),
//!   `W = T diag(β e^Γ) K`, `U = T diag(β) V`: all chunks at once;
//! - states, sequential over chunks (the layout's wavefront): `V_new = U − W S_n`,
//!   `S_{n+1} = e^{Γ_last} S_n + (K ⊙ e^{Γ_last − Γ})ᵀ V_new`;
//! - output: `O = scale · (diag(e^Γ) Q S_n + (Q Kᵀ ⊙ D ⊙ M) V_new)`, `M` causal with its diagonal.
//!
//! Every `D` is masked to `i ≥ j` before it is exponentiated, so no exponent is ever positive and no
//! `inf · 0` arises. Padded rows have `β = 0`, `k = 0` and `g = 0`, so they leave the state alone.
//! Gradients come from autograd through these ops.
//!
//! fla's Triton kernels (`fla/ops/delta_rule/chunk.py`, `fla/ops/gated_delta_rule/chunk.py`) compute
//! the same with bf16 operands and fp32 accumulation: gates in log2 space (`exp2`), `(I + A)⁻¹` by
//! 16×16 forward substitution merged into 64×64 blocks and stored in bf16 (its merges in TF32 for the
//! gated rule), `W`, `U`, `V_new` and the per-chunk states rounded to bf16, and a backward that
//! recomputes the states. Here everything runs in float32 (float64 stays float64), so this path is the
//! exact reference on the CPU and a correct, slower fallback on CUDA; the CUDA kernels of this family
//! will live beside it in this file.

// The math's own names (q, k, v, g, w, u, …) read better here than longer ones.
#![allow(clippy::many_single_char_names)]

use tch::{Kind, Tensor};

use super::layout::{ChunkLayout, continues_document};

/// The (gated) delta rule's output `[B, T, H, dv]` (in `v`'s kind) for `q`, `k` `[B, T, H, dk]`
/// (L2-normalised by the caller), `v` `[B, T, H, dv]`, `beta` `[B, T, H]` (after the sigmoid) and,
/// for Gated DeltaNet, `g` `[B, T, H]`, the per-token log decay (≤ 0), laid out by `layout`. Chunked,
/// see the module doc.
///
/// # Panics
/// If the shapes disagree with each other or with `layout`.
pub fn chunk_delta_rule(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: &Tensor,
    g: Option<&Tensor>,
    scale: f64,
    layout: &ChunkLayout,
) -> Tensor {
    let kind = super::compute_kind(v.kind());
    let [q, k, v] = [q, k, v].map(|x| layout.to_chunks(&x.to_kind(kind)));
    let per_row = |x: &Tensor| layout.to_chunks(&x.to_kind(kind).unsqueeze(-1));
    let beta = per_row(beta);
    let gates = g.map(|g| per_row(g).cumsum(2, kind));
    let (_, heads, c, dk) = q.size4().expect("[M, H, C, dk]");
    let dv = v.size()[3];
    let device = v.device();
    let causal = Tensor::ones([c, c], (Kind::Bool, device)).tril(0);
    let strictly_lower = causal.tril(-1);
    // D = e^{Γ_i − Γ_j} where `mask` holds; the exponent is zeroed elsewhere before exp.
    let between = |mask: &Tensor| {
        gates.as_ref().map(|gates| {
            (gates - gates.transpose(-1, -2))
                .masked_fill(&mask.logical_not(), 0.0)
                .exp()
        })
    };
    let decayed = |x: Tensor, d: Option<Tensor>| match d {
        Some(d) => x * d,
        None => x,
    };

    // The WY representation of every chunk, all at once.
    let kk = k.matmul(&k.transpose(-1, -2)) * &beta;
    let a = decayed(kk, between(&strictly_lower)).masked_fill(&strictly_lower.logical_not(), 0.0);
    let k_beta = decayed(&k * &beta, gates.as_ref().map(Tensor::exp));
    let wu = a.linalg_solve_triangular(&Tensor::cat(&[k_beta, &v * &beta], -1), false, true, true);
    let (w, u) = (wu.narrow(-1, 0, dk), wu.narrow(-1, dk, dv));

    // Per chunk: the keys decayed to its end and its total decay.
    let (k_to_end, chunk_decay) = match &gates {
        Some(gates) => {
            let last = gates.narrow(2, c - 1, 1);
            (&k * (&last - gates).exp(), Some(last.exp()))
        }
        None => (k.shallow_clone(), None),
    };
    let initial = Tensor::zeros([layout.num_documents(), heads, dk, dv], (kind, device));
    let mut v_new = Vec::with_capacity(layout.num_steps());
    let states = layout.scan(&initial, |entering, chunks| {
        let (start, n) = (chunks.start, chunks.end - chunks.start);
        let fresh = u.narrow(0, start, n) - w.narrow(0, start, n).matmul(entering);
        let carried = match &chunk_decay {
            Some(decay) => decay.narrow(0, start, n) * entering,
            None => entering.shallow_clone(),
        };
        let leaving = carried
            + k_to_end
                .narrow(0, start, n)
                .transpose(-1, -2)
                .matmul(&fresh);
        v_new.push(fresh);
        leaving
    });
    let v_new = if v_new.is_empty() {
        v.shallow_clone()
    } else {
        Tensor::cat(&v_new, 0)
    };

    let q_decayed = decayed(q.shallow_clone(), gates.as_ref().map(Tensor::exp));
    let scores = decayed(q.matmul(&k.transpose(-1, -2)), between(&causal))
        .masked_fill(&causal.logical_not(), 0.0);
    let o = (q_decayed.matmul(&states) + scores.matmul(&v_new)) * scale;
    layout.from_chunks(&o).to_kind(v.kind())
}

/// The (gated) delta rule's output token by token, from the recurrence in the module doc, with a
/// state reset at every document of `cu_seqlens`: the test oracle of [`chunk_delta_rule`], same
/// arguments and result.
pub fn recurrent_delta_rule(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: &Tensor,
    g: Option<&Tensor>,
    scale: f64,
    cu_seqlens: &[Vec<u32>],
) -> Tensor {
    let kind = super::compute_kind(v.kind());
    let [q, k, v, beta] = [q, k, v, beta].map(|x| x.to_kind(kind));
    let g = g.map(|g| g.to_kind(kind));
    let (b, t, heads, dk) = q.size4().expect("q is [B, T, H, dk]");
    let dv = v.size()[3];
    let seq_len = usize::try_from(t).expect("T ≥ 0");
    let keep = continues_document(cu_seqlens, seq_len, kind, v.device());
    let mut state = Tensor::zeros([b, heads, dk, dv], (kind, v.device()));
    let mut outputs = Vec::with_capacity(seq_len);
    for i in 0..t {
        let reset = keep.get(i).view([b, 1, 1, 1]);
        let carried = match &g {
            Some(g) => state * reset * g.select(1, i).exp().view([b, heads, 1, 1]),
            None => state * reset,
        };
        let key = k.select(1, i).unsqueeze(-1);
        let recalled = (&carried * &key).sum_dim_intlist(-2, false, kind);
        let written = (v.select(1, i) - recalled) * beta.select(1, i).unsqueeze(-1);
        state = carried + key * written.unsqueeze(-2);
        let query = q.select(1, i).unsqueeze(-1) * scale;
        outputs.push((&state * query).sum_dim_intlist(-2, false, kind));
    }
    Tensor::stack(&outputs, 1).to_kind(v.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{
        Case, delta_rule_inputs, float32_error, head_gates, single_threaded,
    };

    fn check(gated: bool) -> f64 {
        single_threaded();
        let mut worst = 0.0f64;
        for case in Case::all() {
            let [q, k, v, beta] = delta_rule_inputs(&case);
            let mut inputs = vec![q, k, v, beta];
            if gated {
                inputs.push(head_gates(&case));
            }
            let layout = case.layout();
            let error = case.compare(
                &inputs,
                |x| chunk_delta_rule(&x[0], &x[1], &x[2], &x[3], x.get(4), case.scale(), &layout),
                |x| {
                    let cu = &case.cu_seqlens;
                    recurrent_delta_rule(&x[0], &x[1], &x[2], &x[3], x.get(4), case.scale(), cu)
                },
            );
            worst = worst.max(error);
        }
        worst
    }

    /// DeltaNet, chunked against token-by-token: outputs and the gradients of q, k, v and beta.
    #[test]
    fn chunked_equals_the_recurrence_with_documents() {
        eprintln!("delta rule: worst relative error {:.2e}", check(false));
    }

    /// Gated DeltaNet, likewise, with decays down to −20 a step: also the gradient of g.
    #[test]
    fn gated_chunked_equals_the_recurrence_with_strong_decays_and_documents() {
        eprintln!("gated delta rule: worst relative error {:.2e}", check(true));
    }

    /// In float32, with the same strong decays, the chunked output stays finite and close to
    /// float64's.
    #[test]
    fn float32_stays_close_to_float64() {
        single_threaded();
        let case = Case::with_documents();
        let [q, k, v, beta] = delta_rule_inputs(&case);
        let inputs = [q, k, v, beta, head_gates(&case)];
        let layout = case.layout();
        let run = |x: &[Tensor], g| {
            chunk_delta_rule(&x[0], &x[1], &x[2], &x[3], g, case.scale(), &layout)
        };
        let single = inputs.each_ref().map(|x| x.to_kind(Kind::Float));
        for gated in [false, true] {
            let error = float32_error(
                &run(&single, gated.then_some(&single[4])),
                &run(&inputs, gated.then_some(&inputs[4])),
            );
            eprintln!("delta rule (gated: {gated}): float32 relative error {error:.2e}");
            assert!(error < 1e-5, "{error:.2e}");
        }
    }
}
