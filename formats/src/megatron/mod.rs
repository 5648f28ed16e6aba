//! Megatron-LM's indexed dataset: `PREFIX.bin` holds tokens, `PREFIX.idx` says where each sequence is.
//!
//! Byte-compatible with `MMIDIDX` version 1 as written by megatron-core's `IndexedDatasetBuilder`,
//! legacy Megatron and GPT-NeoX. Everything is little-endian, with no padding and no alignment:
//!
//! | offset          | bytes | field                                                         |
//! |-----------------|-------|---------------------------------------------------------------|
//! | 0               | 9     | magic `MMIDIDX\0\0`                                           |
//! | 9               | 8     | version, `u64` = 1                                            |
//! | 17              | 1     | dtype code, `u8` (see [`TokenDtype::code`](crate::TokenDtype::code)) |
//! | 18              | 8     | `S`, the number of sequences, `u64`                           |
//! | 26              | 8     | `D`, the length of the document index = documents + 1, `u64` |
//! | 34              | 4·S   | sequence lengths in tokens, `i32[S]`                          |
//! | 34+4S           | 8·S   | sequence pointers, byte offsets into `.bin`, `i64[S]`         |
//! | 34+12S          | 8·D   | document index, `i64[D]`: starts at 0, ends at `S`            |
//! | 34+12S+8D       | 1·S   | sequence modes, `i8[S]`, **multimodal datasets only**         |
//!
//! Document `d` is the sequences `document_index[d]..document_index[d+1]`; a document may hold zero
//! sequences. The header has no multimodal flag: the file size tells (`+S` bytes; with `S = 0` the two
//! variants are the same bytes and read as [`IndexKind::Megatron`]). Because the arrays
//! start at byte 34, the 8-byte arrays are unaligned and are read with unaligned loads.
//!
//! fairseq writes the same magic without `D` and without a document index (a 26-byte header, file size
//! `26 + 12·S`). [`IndexKind::Fairseq`] reads such files with one document per sequence; fairseq's codes
//! 9 (`uint32`) and 10 (`uint64`) are readable but never written, since Megatron cannot read them.
//!
//! `.bin` is the sequences' elements back to back in `.idx` order, with `pointer[i] = Σ_{j<i} len[j]·itemsize`.
//!
//! **Invariants** upheld by [`IndexedDatasetBuilder`] and checked by [`IndexedDataset::validate`]: lengths
//! are non-negative, pointers are the running sum of lengths, the document index is non-decreasing from 0
//! to `S`, and `.bin` holds exactly the bytes the index accounts for. [`IndexedDataset::open`] checks in
//! O(1) what it can (sizes, the ends of the document index, that the last sequence lies inside `.bin`), and
//! every access checks the bounds of what it touches, so a corrupt file gives an error, never a panic or an
//! out-of-bounds read.

mod index;
mod reader;
mod writer;

pub use index::{HEADER_BYTES, IndexKind, IndexLayout, MAGIC};
pub use reader::{AlignedBytes, IndexedDataset, TokenSlice};
pub use writer::{DatasetSummary, FileDigest, IndexedDatasetBuilder, merge};
