//! Where a batch's tokens sit in the chunked ops: every document cut into chunks of `C` tokens starting
//! at its first token, and the order in which the inter-chunk state pass visits them.
//!
//! A batch is `[B, T]` tokens; sample `b`'s documents are `[cu[i], cu[i + 1])` of its `cu_seqlens`
//! (the trainer's [`Inputs`](crate::models::Inputs) convention; `[0, T]` is one document). Document
//! `d` of `len_d` tokens has `⌈len_d / C⌉` chunks; its chunk `j` holds its tokens `[j·C, (j + 1)·C)`,
//! the last one zero-padded, so no chunk straddles two documents (fla's `prepare_chunk_indices`).
//!
//! Chunks are stored as `[M, H, C, D]` (`M` chunks of the whole batch) in **wavefront order**: the
//! documents are ranked longest first, and step `j` holds the `j`-th chunk of every document that has
//! one, ranks `0..n_j`, as the contiguous chunk range `first_j..first_j + n_j`. The state pass
//! ([`ChunkLayout::scan`]) therefore takes one batched step per chunk of the longest document, however
//! many documents the batch packs, and each step's live states are a prefix of the previous step's.

// The math's own names (b, t, h, d, m, c) read better here than longer ones.
#![allow(clippy::many_single_char_names)]

use std::ops::Range;

use tch::{Device, Kind, Tensor};

/// The chunks of a batch's documents: the gather from `[B, T, …]` to `[M, …, C, …]` and back, the
/// valid rows, and the wavefront of the inter-chunk state pass.
pub struct ChunkLayout {
    batch: i64,
    seq_len: i64,
    chunk_len: i64,
    num_documents: i64,
    /// Each token's row (`chunk · C + offset`) in the chunked layout, row-major over `[B, T]`.
    row_of_token: Tensor,
    /// `[M, C]`, true on rows that hold a token.
    valid_rows: Tensor,
    /// Per wavefront step, the chunks it processes: the `j`-th chunk of documents ranked `0..len`.
    steps: Vec<Range<i64>>,
}

impl std::fmt::Debug for ChunkLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkLayout")
            .field("batch", &self.batch)
            .field("seq_len", &self.seq_len)
            .field("chunk_len", &self.chunk_len)
            .field("num_documents", &self.num_documents)
            .field("num_chunks", &self.num_chunks())
            .field("num_steps", &self.steps.len())
            .finish_non_exhaustive()
    }
}

impl ChunkLayout {
    /// The layout of `cu_seqlens.len()` samples of `seq_len` tokens each, cut into chunks of
    /// `chunk_len` tokens; its index tensors live on `device`. Empty documents get no chunk.
    ///
    /// # Panics
    /// If `chunk_len` is 0, or a sample's `cu_seqlens` does not rise from 0 to `seq_len`.
    pub fn new(cu_seqlens: &[Vec<u32>], seq_len: usize, chunk_len: usize, device: Device) -> Self {
        assert!(chunk_len > 0, "chunks hold at least one token");
        // (sample, first token, tokens) of every non-empty document.
        let mut documents = Vec::new();
        for (sample, cu) in cu_seqlens.iter().enumerate() {
            assert!(
                cu.first() == Some(&0)
                    && cu.last().map(|&end| end as usize) == Some(seq_len)
                    && cu.windows(2).all(|pair| pair[0] <= pair[1]),
                "sample {sample}: cu_seqlens {cu:?} must rise from 0 to seq_len {seq_len}"
            );
            for pair in cu.windows(2) {
                if pair[1] > pair[0] {
                    documents.push((sample, pair[0] as usize, (pair[1] - pair[0]) as usize));
                }
            }
        }
        let chunks_of = |len: usize| len.div_ceil(chunk_len);
        // Longest first (stable: ties keep batch order), so each step's documents are a prefix.
        documents.sort_by_key(|&(_, _, len)| std::cmp::Reverse(chunks_of(len)));
        let max_chunks = documents.first().map_or(0, |&(_, _, len)| chunks_of(len));
        let mut steps = Vec::with_capacity(max_chunks);
        let mut first = 0;
        for j in 0..max_chunks {
            let live = documents.partition_point(|&(_, _, len)| chunks_of(len) > j);
            steps.push(first..first + live);
            first += live;
        }
        let num_chunks = first;

        let mut row_of_token = vec![0i64; cu_seqlens.len() * seq_len];
        let mut valid_rows = vec![false; num_chunks * chunk_len];
        for (rank, &(sample, start, len)) in documents.iter().enumerate() {
            for offset in 0..len {
                let chunk = steps[offset / chunk_len].start + rank;
                let row = chunk * chunk_len + offset % chunk_len;
                row_of_token[sample * seq_len + start + offset] = as_i64(row);
                valid_rows[row] = true;
            }
        }
        Self {
            batch: as_i64(cu_seqlens.len()),
            seq_len: as_i64(seq_len),
            chunk_len: as_i64(chunk_len),
            num_documents: as_i64(documents.len()),
            row_of_token: Tensor::from_slice(&row_of_token).to_device(device),
            valid_rows: Tensor::from_slice(&valid_rows)
                .view([as_i64(num_chunks), as_i64(chunk_len)])
                .to_device(device),
            steps: steps
                .into_iter()
                .map(|step| as_i64(step.start)..as_i64(step.end))
                .collect(),
        }
    }

    /// Tokens per chunk, `C`.
    pub fn chunk_len(&self) -> i64 {
        self.chunk_len
    }

    /// Chunks of the whole batch, `M`.
    pub fn num_chunks(&self) -> i64 {
        self.valid_rows.size()[0]
    }

    /// Non-empty documents of the whole batch.
    pub fn num_documents(&self) -> i64 {
        self.num_documents
    }

    /// Sequential steps of the state pass: the longest document's chunk count.
    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }

    /// `[M, C]` bool, true on the rows that hold a token (the others are padding).
    pub fn valid_rows(&self) -> &Tensor {
        &self.valid_rows
    }

    /// `x` (`[B, T, H, D]`) gathered into chunks, `[M, H, C, D]`, padded rows zero. Differentiable.
    ///
    /// # Panics
    /// If `x` is not `[B, T, H, D]` for this layout's `B` and `T`.
    pub fn to_chunks(&self, x: &Tensor) -> Tensor {
        let (b, t, h, d) = x.size4().expect("x is [B, T, H, D]");
        assert_eq!((b, t), (self.batch, self.seq_len), "x is [B, T, H, D]");
        let (m, c) = (self.num_chunks(), self.chunk_len);
        Tensor::zeros([m * c, h, d], (x.kind(), x.device()))
            .index_copy(0, &self.row_of_token, &x.reshape([b * t, h, d]))
            .view([m, c, h, d])
            .transpose(1, 2)
    }

    /// `y` (`[M, H, C, D]`) scattered back to `[B, T, H, D]`; padded rows are dropped. Differentiable.
    ///
    /// # Panics
    /// If `y` is not `[M, H, C, D]` for this layout's `M` and `C`.
    pub fn from_chunks(&self, y: &Tensor) -> Tensor {
        let (m, h, c, d) = y.size4().expect("y is [M, H, C, D]");
        assert_eq!(
            (m, c),
            (self.num_chunks(), self.chunk_len),
            "y is [M, H, C, D]"
        );
        y.transpose(1, 2)
            .reshape([m * c, h, d])
            .index_select(0, &self.row_of_token)
            .view([self.batch, self.seq_len, h, d])
    }

    /// The inter-chunk recurrence as a wavefront: `step(states, chunks)` gets the states entering a
    /// contiguous range of chunks (the `j`-th chunk of documents ranked `0..chunks.len()`, one state
    /// each along dim 0) and returns the states leaving them. `initial` holds every document's first
    /// state (`[num_documents, …]`, usually zeros: states reset at each document start). Returns the
    /// states entering every chunk, `[M, …]` in chunk order.
    pub fn scan(
        &self,
        initial: &Tensor,
        mut step: impl FnMut(&Tensor, Range<i64>) -> Tensor,
    ) -> Tensor {
        let mut entering = Vec::with_capacity(self.steps.len());
        let mut states = initial.shallow_clone();
        for chunks in &self.steps {
            let live = states.narrow(0, 0, chunks.end - chunks.start);
            states = step(&live, chunks.clone());
            entering.push(live);
        }
        if entering.is_empty() {
            return initial.narrow(0, 0, 0);
        }
        Tensor::cat(&entering, 0)
    }
}

/// `[T, B]` in `kind`: 0 where token `t` of sample `b` starts a document, else 1 — the factor that
/// resets a token-by-token reference's state.
pub(crate) fn continues_document(
    cu_seqlens: &[Vec<u32>],
    seq_len: usize,
    kind: Kind,
    device: Device,
) -> Tensor {
    let mut keep = vec![1.0f64; seq_len * cu_seqlens.len()];
    for (sample, cu) in cu_seqlens.iter().enumerate() {
        for &start in cu.iter().filter(|&&start| (start as usize) < seq_len) {
            keep[start as usize * cu_seqlens.len() + sample] = 0.0;
        }
    }
    Tensor::from_slice(&keep)
        .view([as_i64(seq_len), as_i64(cu_seqlens.len())])
        .to_kind(kind)
        .to_device(device)
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).expect("sizes fit i64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_start_at_each_document_and_the_wavefront_is_as_long_as_the_longest() {
        // Sample 0: documents of 1, 4, 8 and 7 tokens; sample 1: one of 20. Chunks of 4.
        let layout = ChunkLayout::new(&[vec![0, 1, 5, 13, 20], vec![0, 20]], 20, 4, Device::Cpu);
        assert_eq!(layout.num_documents(), 5);
        // Chunks: 1 + 1 + 2 + 2 + 5; steps: the 20-token document alone sets their number.
        assert_eq!(layout.num_chunks(), 11);
        assert_eq!(layout.num_steps(), 5);
        assert_eq!(layout.steps, [0..5, 5..8, 8..9, 9..10, 10..11]);
        // Each token's position in its document, chunked: row i of a document's chunk j is j·4 + i.
        let positions: Vec<f64> = [0..1, 0..4, 0..8, 0..7, 0..20]
            .into_iter()
            .flatten()
            .map(f64::from)
            .collect();
        let x = Tensor::from_slice(&positions).view([2, 20, 1, 1]);
        let chunks = layout.to_chunks(&x).view([11, 4]);
        let valid = layout.valid_rows();
        // Rank 0 is the 20-token document, then the 8- and 7-token ones (ties keep batch order).
        let first: Vec<f64> = chunks.get(0).try_into().unwrap();
        assert_eq!(first, [0.0, 1.0, 2.0, 3.0]);
        let second_of_seven: Vec<f64> = chunks.get(7).try_into().unwrap();
        assert_eq!(second_of_seven, [4.0, 5.0, 6.0, 0.0]);
        let valid_of_seven: Vec<bool> = valid.get(7).try_into().unwrap();
        assert_eq!(valid_of_seven, [true, true, true, false]);
        let single: Vec<bool> = valid.get(3).try_into().unwrap();
        assert_eq!(single, [true, false, false, false]);
        assert_eq!(valid.sum(Kind::Int64).int64_value(&[]), 40);
        assert!(layout.from_chunks(&layout.to_chunks(&x)).equal(&x));
    }

    #[test]
    fn the_scan_resets_states_and_hands_back_the_entering_ones() {
        // Documents of 2 and 1 chunks: entering states are [0, 0] for step 0 and [1] for step 1.
        let layout = ChunkLayout::new(&[vec![0, 3, 5]], 5, 2, Device::Cpu);
        let entering = layout.scan(&Tensor::zeros([2], (Kind::Double, Device::Cpu)), |s, _| {
            s + 1.0
        });
        let values: Vec<f64> = entering.try_into().unwrap();
        assert_eq!(values, [0.0, 0.0, 1.0]);
    }

    #[test]
    fn continuation_factors_are_zero_at_document_starts() {
        let keep = continues_document(&[vec![0, 2, 3], vec![0, 3]], 3, Kind::Double, Device::Cpu);
        let values: Vec<f64> = keep.reshape([-1]).try_into().unwrap();
        assert_eq!(values, [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
    }
}
