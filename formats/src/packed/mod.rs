//! Packed varlen windows: documents concatenated in order and cut into windows of exactly `seq_len`
//! tokens, each with the offsets where documents start inside it.
//!
//! A packed dataset is two Megatron indexed datasets (see [`crate::megatron`]), so any Megatron or numpy
//! reader opens both:
//!
//! | files                              | dtype          | sequence `i` (= document `i`)                          |
//! |------------------------------------|----------------|--------------------------------------------------------|
//! | `PREFIX.bin`, `PREFIX.idx`          | the tokens'    | window `i`: exactly `seq_len` tokens                   |
//! | `PREFIX_cu_seqlens.bin`, `.idx`     | `int32`        | `cu_seqlens` of window `i`: `[0, s₁, …, seq_len]`      |
//!
//! **Invariants**, checked by [`PackedDataset::window`] for every window it returns:
//! - every window holds exactly `seq_len` tokens, so window `i` starts at token `i·seq_len` of `PREFIX.bin`;
//! - `cu_seqlens` is strictly increasing, starts at 0 and ends at `seq_len`; each inner entry is the offset
//!   of a document start. A document cut by a window edge continues at offset 0 of the next window, and
//!   an empty document leaves no trace;
//! - the two datasets have the same number of sequences.
//!
//! Only the final partial window can be incomplete; [`PackedWriter::finish`] drops it or pads it (the
//! padding then forms its own segment), as the caller's [`TailPolicy`] says, and reports which.
//!
//! Reading window `i` with numpy, no flame needed:
//!
//! ```python
//! import numpy as np
//! tokens = np.memmap("PREFIX.bin", dtype=np.uint16, mode="r").reshape(-1, seq_len)
//! cu = np.memmap("PREFIX_cu_seqlens.bin", dtype=np.int32, mode="r")   # offsets: PREFIX_cu_seqlens.idx
//! ```

mod reader;
mod writer;

pub(crate) use reader::is_packed;
pub use reader::{PackedDataset, Window};
pub use writer::{PackedSummary, PackedWriter, TailPolicy};

use std::path::{Path, PathBuf};

/// `PREFIX_cu_seqlens`, the prefix of the offsets dataset that goes with the tokens at `prefix`.
pub fn cu_seqlens_prefix(prefix: &Path) -> PathBuf {
    crate::prefix::with_suffix(prefix, "_cu_seqlens")
}
