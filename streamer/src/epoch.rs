//! One dataset's epochs: documents shuffled without materialising the order, packed into windows.
//!
//! **Document order.** Documents are grouped into blocks of [`DOCS_PER_BLOCK`] consecutive documents. An
//! epoch visits the blocks in a keyed permutation and, inside each block, the documents in another keyed
//! permutation (both [`Permutation`]s, O(1) memory). A block's token count does not depend on the order
//! inside it, so the start-up cost is one sequential pass over the document lengths
//! ([`EpochPlan::new`], ~N/B block totals kept) and each epoch costs one prefix sum over the blocks.
//!
//! **Windows.** The epoch's documents, concatenated in that order, are cut into windows of exactly
//! `seq_len` tokens; the last partial window of an epoch is not served (each epoch drops a different,
//! shuffled tail of fewer than `seq_len` tokens). Windows are then served in an order shuffled within
//! bounded blocks of [`WINDOWS_PER_BLOCK`], so neighbouring samples do not share documents.
//!
//! **Boundaries.** A window's `cu_seqlens` start at 0, hold every position where a document (or the
//! continuation of one cut at the window's start) begins, every `context_len` tokens inside each such
//! piece, and end at `seq_len` — flame's varlen semantics, taken from the index instead of scanning for BOS.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use flame_formats::permutation::{Permutation, derive_key};

use crate::source::Documents;

/// Consecutive documents shuffled as a block.
pub const DOCS_PER_BLOCK: u64 = 1024;
/// Windows shuffled among themselves.
pub const WINDOWS_PER_BLOCK: u64 = 4096;

/// Which piece of which document a window holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Document index in the dataset.
    pub document: u64,
    /// Token range inside the document.
    pub tokens: Range<u64>,
}

/// The packing of one dataset: its block totals and the order keys.
pub struct EpochPlan<D> {
    documents: D,
    seq_len: u64,
    seed: u64,
    /// Tokens of each block of consecutive documents.
    block_tokens: Vec<u64>,
    total_tokens: u64,
    /// Prefix sums of block tokens in the block order of recent epochs. This cache and the next are
    /// shared by every session of a job; a lock poisoned by a panicking session is taken over, since the
    /// caches change only by whole insertions and removals.
    cache: Mutex<Vec<(u64, Arc<Vec<u64>>)>>,
    /// Recently used blocks in their epoch's document order.
    blocks: Mutex<BlockCache>,
}

/// One block of one epoch: its documents in order and where each starts inside the block.
#[derive(Debug)]
struct BlockLayout {
    documents: Vec<u64>,
    /// `starts[i]` is the block-relative token offset of `documents[i]`; one more entry at the end.
    starts: Vec<u64>,
}

/// Blocks kept laid out (a window rarely spans more than two, but the ranks and clients of a job read
/// windows some way apart); about 16 KB each.
const BLOCKS_CACHED: usize = 512;

/// Epochs whose block prefix sums are kept.
const EPOCHS_CACHED: usize = 4;

/// Bytes an [`EpochPlan`] of `documents` documents holds at most: its block totals, the block prefix sums
/// of the 4 epochs it keeps, and the 512 laid-out blocks it keeps (the server's memory budget,
/// [`crate::budget`]).
pub fn state_bytes(documents: u64) -> u64 {
    let blocks = documents.div_ceil(DOCS_PER_BLOCK);
    let per_block = documents.min(DOCS_PER_BLOCK);
    // A layout: a document id and a start per document, one more start, and the cache entry around it.
    let layout = per_block * 8 + (per_block + 1) * 8 + 64;
    blocks * 8 + EPOCHS_CACHED as u64 * (blocks + 1) * 8 + blocks.min(BLOCKS_CACHED as u64) * layout
}

/// Laid-out blocks keyed by (epoch, block), the least recently used evicted first.
#[derive(Default)]
struct BlockCache {
    entries: std::collections::HashMap<(u64, u64), (Arc<BlockLayout>, u64)>,
    clock: u64,
}

impl BlockCache {
    fn get(&mut self, key: (u64, u64)) -> Option<Arc<BlockLayout>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(&key).map(|(layout, used)| {
            *used = clock;
            Arc::clone(layout)
        })
    }

    fn insert(&mut self, key: (u64, u64), layout: Arc<BlockLayout>) {
        if self.entries.len() >= BLOCKS_CACHED
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.entries.insert(key, (layout, self.clock));
    }
}

impl<D> std::fmt::Debug for EpochPlan<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochPlan")
            .field("seq_len", &self.seq_len)
            .field("blocks", &self.block_tokens.len())
            .field("total_tokens", &self.total_tokens)
            .finish_non_exhaustive()
    }
}

impl<D: Documents> EpochPlan<D> {
    /// Plans `documents` for windows of `seq_len`, keyed by `seed` (the job's seed mixed with the
    /// dataset's position in the job).
    pub fn new(documents: D, seq_len: u32, seed: u64) -> Self {
        let n = documents.num_documents();
        let mut block_tokens =
            Vec::with_capacity(usize::try_from(n.div_ceil(DOCS_PER_BLOCK)).unwrap_or(0));
        let mut total_tokens = 0;
        for first in (0..n).step_by(usize::try_from(DOCS_PER_BLOCK).expect("small")) {
            let tokens: u64 = (first..n.min(first + DOCS_PER_BLOCK))
                .map(|d| documents.document_len(d))
                .sum();
            block_tokens.push(tokens);
            total_tokens += tokens;
        }
        Self {
            documents,
            seq_len: u64::from(seq_len),
            seed,
            block_tokens,
            total_tokens,
            cache: Mutex::new(Vec::new()),
            blocks: Mutex::new(BlockCache::default()),
        }
    }

    /// The documents.
    pub fn documents(&self) -> &D {
        &self.documents
    }

    /// Tokens in the dataset.
    pub fn total_tokens(&self) -> u64 {
        self.total_tokens
    }

    /// Windows served per epoch.
    pub fn windows_per_epoch(&self) -> u64 {
        self.total_tokens / self.seq_len
    }

    fn key(&self, parts: &[u64]) -> u64 {
        derive_key(self.seed, parts)
    }

    fn block_order(&self, epoch: u64) -> Permutation {
        Permutation::new(self.block_tokens.len() as u64, self.key(&[1, epoch]))
    }

    fn documents_in_block(&self, block: u64) -> Range<u64> {
        let first = block * DOCS_PER_BLOCK;
        first..self.documents.num_documents().min(first + DOCS_PER_BLOCK)
    }

    /// Prefix sums of block tokens in `epoch`'s block order (one more entry than blocks).
    fn block_starts(&self, epoch: u64) -> Arc<Vec<u64>> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, starts)) = cache.iter().find(|(e, _)| *e == epoch) {
            return Arc::clone(starts);
        }
        let order = self.block_order(epoch);
        let mut starts = Vec::with_capacity(self.block_tokens.len() + 1);
        let mut total = 0;
        starts.push(0);
        for i in 0..order.len() {
            total += self.block_tokens[usize::try_from(order.apply(i)).expect("fits")];
            starts.push(total);
        }
        let starts = Arc::new(starts);
        if cache.len() >= EPOCHS_CACHED {
            cache.remove(0);
        }
        cache.push((epoch, Arc::clone(&starts)));
        starts
    }

    /// Block `block`'s documents in `epoch`'s order, with their offsets.
    fn block_layout(&self, epoch: u64, block: u64) -> Arc<BlockLayout> {
        if let Some(layout) = self
            .blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get((epoch, block))
        {
            return layout;
        }
        let docs = self.documents_in_block(block);
        let inner = Permutation::new(docs.end - docs.start, self.key(&[3, epoch, block]));
        let documents: Vec<u64> = (0..inner.len())
            .map(|i| docs.start + inner.apply(i))
            .collect();
        let mut starts = Vec::with_capacity(documents.len() + 1);
        let mut at = 0;
        starts.push(0);
        for &d in &documents {
            at += self.documents.document_len(d);
            starts.push(at);
        }
        let layout = Arc::new(BlockLayout { documents, starts });
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((epoch, block), Arc::clone(&layout));
        layout
    }

    /// The physical window (position in the packed epoch stream) served at `index` of `epoch`.
    pub fn physical_window(&self, epoch: u64, index: u64) -> u64 {
        let n = self.windows_per_epoch();
        assert!(index < n, "window {index} of an epoch of {n}");
        let block = index / WINDOWS_PER_BLOCK;
        let first = block * WINDOWS_PER_BLOCK;
        let size = WINDOWS_PER_BLOCK.min(n - first);
        first + Permutation::new(size, self.key(&[2, epoch, block])).apply(index - first)
    }

    /// The pieces of documents that make up window `index` of `epoch`, in order.
    pub fn window(&self, epoch: u64, index: u64) -> Vec<Piece> {
        let window = self.physical_window(epoch, index);
        let starts = self.block_starts(epoch);
        let (mut at, end) = (window * self.seq_len, (window + 1) * self.seq_len);
        let order = self.block_order(epoch);
        let mut pieces = Vec::new();
        // The block holding token `at`: the last block starting at or before it.
        let mut slot = starts.partition_point(|&s| s <= at) - 1;
        while at < end {
            let layout = self.block_layout(epoch, order.apply(slot as u64));
            let base = starts[slot];
            // The first document of the block that ends after `at`.
            let mut i = layout.starts.partition_point(|&s| base + s <= at) - 1;
            while i < layout.documents.len() && at < end {
                let (doc_start, doc_end) = (base + layout.starts[i], base + layout.starts[i + 1]);
                if doc_end > at {
                    let piece_end = doc_end.min(end);
                    pieces.push(Piece {
                        document: layout.documents[i],
                        tokens: at - doc_start..piece_end - doc_start,
                    });
                    at = piece_end;
                }
                i += 1;
            }
            slot += 1;
        }
        pieces
    }
}

/// `cu_seqlens` of a window made of `pieces` (see the module documentation).
pub fn cu_seqlens(pieces: &[Piece], context_len: u64) -> Vec<u32> {
    let mut cu = vec![0u32];
    let mut at = 0u64;
    for piece in pieces {
        let len = piece.tokens.end - piece.tokens.start;
        let mut cut = at;
        while cut < at + len {
            if cut != 0 {
                cu.push(u32::try_from(cut).expect("below seq_len"));
            }
            cut += context_len;
        }
        at += len;
    }
    cu.push(u32::try_from(at).expect("below seq_len"));
    cu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cu_seqlens_mark_document_starts_and_context_cuts() {
        let piece = |document, tokens| Piece { document, tokens };
        let pieces = [piece(0, 5..8), piece(1, 0..10), piece(2, 0..2)];
        assert_eq!(cu_seqlens(&pieces, 100), [0, 3, 13, 15]);
        assert_eq!(cu_seqlens(&pieces, 4), [0, 3, 7, 11, 13, 15]);
        assert_eq!(cu_seqlens(&pieces[1..2], 4), [0, 4, 8, 10]);
    }
}
