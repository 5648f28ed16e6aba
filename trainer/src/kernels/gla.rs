//! Gated linear attention (GLA): the chunked op and its token-by-token reference.
//!
//! Per head, with a state `S ∈ R^{dk×dv}` that starts at 0 at every document:
//! `S_t = diag(exp(g_t)) S_{t−1} + k_t v_tᵀ`, `o_t = S_tᵀ (q_t · scale)`, where `g_t ≤ 0` is the
//! per-channel log decay (fla's `naive_recurrent_gla`; [`recurrent_gla`] computes exactly this).
//!
//! [`chunk_gla`] computes the same in chunks of `C` tokens laid out by [`ChunkLayout`]. Inside a chunk,
//! `G` is the inclusive cumulative sum of `g` and `G_last` its last row (padded rows have `g = 0`, so
//! `G_last` is the last token's and padding leaves the state alone):
//! - states, sequential over chunks (the layout's wavefront):
//!   `S_{n+1} = diag(e^{G_last}) S_n + (K ⊙ e^{G_last − G})ᵀ V`;
//! - output: `O = scale · ((Q ⊙ e^G) S_n + tril(A) V)` with `A_ij = Σ_c q_ic k_jc e^{G_ic − G_jc}`.
//!
//! `A` is built by secondary chunking into sub-chunks of 16 rows, so that no exponent is ever positive
//! (with `g` down to −20 a step, `e^{−G}` alone would overflow): an off-diagonal block (query sub-chunk
//! `i` after key sub-chunk `j`) is one matmul of `Q ⊙ e^{G − G_r}` and `K ⊙ e^{G_r − G}`, `G_r` the
//! cumulative gate at sub-chunk `i`'s first row; the 16×16 diagonal blocks, where no such reference
//! row exists, are summed elementwise (a `[M, H, C/16, 16, 16, dk]` product, kept for the backward).
//! Gradients come from autograd through these ops.
//!
//! fla's Triton kernels (`fla/ops/gla/chunk.py`) compute the same in fp32 with bf16 operands: gates in
//! log2 space (`exp2`), the per-chunk states and `Q ⊙ e^G` rounded to bf16 before their matmuls,
//! off-diagonal blocks as TF32 dots, the intra-chunk matrix rounded to bf16 before `A V`, and a
//! backward that recomputes the states. Here everything runs in float32 (float64 stays float64), so
//! this path is the exact reference on the CPU and a correct, slower fallback on CUDA, where those
//! kernels themselves run when built ([`super::fla::gla`]).

// The math's own names (q, k, v, g, b, t, h, d, …) read better here than longer ones.
#![allow(clippy::many_single_char_names)]

use tch::{Kind, Tensor};

use super::layout::{ChunkLayout, continues_document};

/// Rows of GLA's secondary chunks (fla's `BC`).
const SUB_CHUNK_LEN: i64 = 16;

/// GLA's output `[B, T, H, dv]` (in `v`'s kind) for `q`, `k`, `g` `[B, T, H, dk]` and `v`
/// `[B, T, H, dv]` laid out by `layout`; `g` is the per-token log decay (≤ 0). Chunked, see the
/// module doc.
///
/// # Panics
/// If the shapes disagree with each other or with `layout`, or the chunk length is above 16 and not
/// a multiple of 16.
pub fn chunk_gla(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    scale: f64,
    layout: &ChunkLayout,
) -> Tensor {
    let kind = super::compute_kind(v.kind());
    let [q, k, v, g] = [q, k, v, g].map(|x| layout.to_chunks(&x.to_kind(kind)));
    let (_, heads, c, dk) = q.size4().expect("[M, H, C, dk]");
    let dv = v.size()[3];
    let gates = g.cumsum(2, kind);
    let last = gates.narrow(2, c - 1, 1);

    // Every chunk's own contribution to the state it hands on, all at once; only the decayed sum
    // runs sequentially.
    let update = (&k * (&last - &gates).exp()).transpose(-1, -2).matmul(&v);
    let decay = last.exp().transpose(-1, -2);
    let initial = Tensor::zeros([layout.num_documents(), heads, dk, dv], (kind, v.device()));
    let states = layout.scan(&initial, |entering, chunks| {
        let n = chunks.end - chunks.start;
        decay.narrow(0, chunks.start, n) * entering + update.narrow(0, chunks.start, n)
    });

    let inter = (&q * gates.exp()).matmul(&states);
    let o = (inter + intra_chunk(&q, &k, &v, &gates)) * scale;
    layout.from_chunks(&o).to_kind(v.kind())
}

/// `tril(A) V` of each chunk (`[M, H, C, ·]` operands, `gates` the cumulative log decays), by
/// secondary chunking: see the module doc.
fn intra_chunk(q: &Tensor, k: &Tensor, v: &Tensor, gates: &Tensor) -> Tensor {
    let (m, heads, c, dk) = q.size4().expect("[M, H, C, dk]");
    let dv = v.size()[3];
    let sub = SUB_CHUNK_LEN.min(c);
    assert_eq!(
        c % sub,
        0,
        "chunks of {c} rows do not split into sub-chunks of {sub}"
    );
    let num_sub = c / sub;
    let device = q.device();
    let split = |x: &Tensor, d: i64| x.reshape([m, heads, num_sub, sub, d]);
    let (qs, ks, gs) = (split(q, dk), split(k, dk), split(gates, dk));

    // Diagonal blocks: A_ij = Σ_c q_ic k_jc e^{G_ic − G_jc} for j ≤ i, the exponent zeroed above the
    // diagonal before it is exponentiated.
    let above = Tensor::ones([sub, sub], (Kind::Bool, device))
        .tril(0)
        .logical_not();
    let exponent = (gs.unsqueeze(4) - gs.unsqueeze(3)).masked_fill(&above.unsqueeze(-1), 0.0);
    let diagonal = (qs.unsqueeze(4) * ks.unsqueeze(3) * exponent.exp())
        .sum_dim_intlist(-1, false, q.kind())
        .masked_fill(&above, 0.0);
    let o = diagonal.matmul(&split(v, dv)).view([m, heads, c, dv]);
    if num_sub == 1 {
        return o;
    }

    // Off-diagonal blocks: for query sub-chunk i, keys before its first row r_i, as a matmul of
    // q ⊙ e^{G − G_{r_i}} and k ⊙ e^{G_{r_i} − G}; the other keys' exponents are zeroed before exp.
    let reference = gs.narrow(3, 0, 1);
    let q_rel = qs * (&gs - &reference).exp();
    let first_row = Tensor::arange_start_step(0, c, sub, (Kind::Int64, device));
    let key_row = Tensor::arange(c, (Kind::Int64, device));
    let not_before = key_row.unsqueeze(0).ge_tensor(&first_row.unsqueeze(1));
    let exponent = (reference - gates.unsqueeze(2)).masked_fill(&not_before.unsqueeze(-1), 0.0);
    let k_rel = k.unsqueeze(2) * exponent.exp();
    let off_diagonal = q_rel
        .matmul(&k_rel.transpose(-1, -2))
        .masked_fill(&not_before.unsqueeze(1), 0.0)
        .view([m, heads, c, c]);
    o + off_diagonal.matmul(v)
}

/// GLA's output token by token, from the recurrence in the module doc (fla's `naive_recurrent_gla`
/// with a free `scale` and a state reset at every document of `cu_seqlens`): the test oracle of
/// [`chunk_gla`], same arguments and result.
pub fn recurrent_gla(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &Tensor,
    scale: f64,
    cu_seqlens: &[Vec<u32>],
) -> Tensor {
    let kind = super::compute_kind(v.kind());
    let [q, k, v, g] = [q, k, v, g].map(|x| x.to_kind(kind));
    let (b, t, heads, dk) = q.size4().expect("q is [B, T, H, dk]");
    let dv = v.size()[3];
    let seq_len = usize::try_from(t).expect("T ≥ 0");
    let keep = continues_document(cu_seqlens, seq_len, kind, v.device());
    let mut state = Tensor::zeros([b, heads, dk, dv], (kind, v.device()));
    let mut outputs = Vec::with_capacity(seq_len);
    for i in 0..t {
        let reset = keep.get(i).view([b, 1, 1, 1]);
        let decay = g.select(1, i).exp().unsqueeze(-1);
        state = state * reset * decay + k.select(1, i).unsqueeze(-1) * v.select(1, i).unsqueeze(-2);
        let query = q.select(1, i).unsqueeze(-1) * scale;
        outputs.push((&state * query).sum_dim_intlist(-2, false, kind));
    }
    Tensor::stack(&outputs, 1).to_kind(v.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{Case, float32_error, gla_gates, random_inputs, single_threaded};

    /// Chunked against token-by-token on every case: outputs and the gradients of q, k, v and g.
    #[test]
    fn chunked_equals_the_recurrence_with_strong_gates_and_documents() {
        single_threaded();
        let mut worst = 0.0f64;
        for case in Case::all() {
            let [q, k, v] = random_inputs(&case);
            let g = gla_gates(&case);
            let inputs = [q, k, v, g];
            let layout = case.layout();
            let error = case.compare(
                &inputs,
                |x| chunk_gla(&x[0], &x[1], &x[2], &x[3], case.scale(), &layout),
                |x| recurrent_gla(&x[0], &x[1], &x[2], &x[3], case.scale(), &case.cu_seqlens),
            );
            worst = worst.max(error);
        }
        eprintln!("gla: worst relative error {worst:.2e}");
    }

    /// In float32, with the same strong gates, the chunked output stays finite and close to float64's.
    #[test]
    fn float32_stays_close_to_float64() {
        single_threaded();
        let case = Case::with_documents();
        let [q, k, v] = random_inputs(&case);
        let inputs = [q, k, v, gla_gates(&case)];
        let layout = case.layout();
        let run = |x: &[Tensor]| chunk_gla(&x[0], &x[1], &x[2], &x[3], case.scale(), &layout);
        let single = inputs.each_ref().map(|x| x.to_kind(Kind::Float));
        let error = float32_error(&run(&single), &run(&inputs));
        eprintln!("gla: float32 relative error {error:.2e}");
        assert!(error < 1e-5, "{error:.2e}");
    }
}
