//! On-disk token formats of flame. No async, no tokenizer: bytes in, tokens out.
//!
//! - [`megatron`]: Megatron-LM's indexed dataset (`.bin` + `.idx`, `MMIDIDX` v1), byte-compatible both ways.
//!   [`IndexedDatasetBuilder`] writes one in bounded memory and merges several; [`IndexedDataset`] maps one
//!   and hands out zero-copy [`TokenSlice`]s by sequence or document.
//! - [`packed`]: fixed windows of `seq_len` tokens with per-window `cu_seqlens`, stored as two Megatron
//!   datasets ([`PackedWriter`], [`PackedDataset`]).
//! - [`manifest`]: `manifest.json`, the commit point of an output directory, with checksums to [`verify`](Manifest::verify).
//! - [`Corpus`] opens whatever path a user gives (manifest directory, prefix, directory of prefixes).
//! - [`permutation::Permutation`]: a seeded bijection on `0..n` in O(1) memory, for shuffling without an index.
//!
//! ```
//! use flame_formats::{IndexedDataset, IndexedDatasetBuilder, TokenDtype};
//!
//! # fn main() -> Result<(), flame_formats::Error> {
//! let dir = tempfile::tempdir().expect("temporary directory");
//! let prefix = dir.path().join("shard_00000");
//! let mut builder = IndexedDatasetBuilder::create(&prefix, TokenDtype::Uint16)?;
//! builder.add_item(&[1, 22557, 1526])?;
//! builder.end_document()?;
//! let summary = builder.finalize()?;
//! assert_eq!(summary.num_tokens, 3);
//!
//! let dataset = IndexedDataset::open(&prefix)?;
//! assert_eq!(dataset.sequence_as::<u16>(0)?, &[1, 22557, 1526]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![cfg_attr(not(target_endian = "little"), allow(unused))]

#[cfg(not(target_endian = "little"))]
compile_error!("flame-formats views little-endian files in place and needs a little-endian target");

mod corpus;
mod dtype;
mod durable;
mod error;
pub mod manifest;
pub mod megatron;
pub mod packed;
pub mod permutation;
pub mod prefix;

pub use corpus::{Corpus, Shard};
pub use dtype::{Element, TokenDtype};
pub use durable::{publish, sha256_file, sync_parent, temp_path, write_atomic};
pub use error::{Error, Result};
pub use manifest::Manifest;
pub use megatron::{IndexedDataset, IndexedDatasetBuilder, TokenSlice};
pub use packed::{PackedDataset, PackedWriter, TailPolicy};
