//! Writing tokenized documents as numbered shards, Megatron or packed, and describing them for the manifest.
//!
//! The shard in progress lives in a staging directory; when it is full it is published into the output
//! directory and [`ShardSink::rotate`] returns a [`SinkState`]: everything needed to continue the same
//! byte stream in another process (the shards so far, document counts, and for packed output the partial
//! window). That is what makes a killed run resumable with identical output.

use std::path::{Path, PathBuf};

use flame_formats::manifest::{FilePair, Packing, ShardEntry, Totals};
use flame_formats::packed::cu_seqlens_prefix;
use flame_formats::prefix::{bin_path, idx_path};
use flame_formats::{IndexedDatasetBuilder, PackedWriter, TailPolicy, TokenDtype, publish};
use serde::{Deserialize, Serialize};

/// How documents are laid out in shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One document per sequence (Megatron's `_text_document`); a document without tokens has none.
    Megatron,
    /// Windows of exactly `seq_len` tokens with `cu_seqlens`.
    Packed {
        /// Tokens per window.
        seq_len: u32,
        /// The final partial window's fate.
        tail: TailPolicy,
    },
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per run; boxing buys nothing
enum Writer {
    Megatron(IndexedDatasetBuilder),
    Packed(PackedWriter),
}

/// The state of a sink between two documents at a shard boundary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkState {
    /// Published shards, in order.
    pub shards: Vec<ShardEntry>,
    /// Documents added so far.
    pub num_documents: u64,
    /// Their tokens.
    pub num_document_tokens: u64,
    /// Packed output: the partial window's tokens and document offsets (starting with 0).
    pub carry: Option<(Vec<u32>, Vec<u32>)>,
}

/// Receives documents in order; a new shard begins once the current one holds `shard_tokens` tokens.
#[derive(Debug)]
pub struct ShardSink {
    dir: PathBuf,
    staging: PathBuf,
    layout: Layout,
    shard_tokens: u64,
    writer: Writer,
    shards: Vec<ShardEntry>,
    num_documents: u64,
    num_document_tokens: u64,
}

/// What the sink wrote.
#[derive(Debug)]
pub struct SinkSummary {
    /// Manifest entries of the shards, in order.
    pub shards: Vec<ShardEntry>,
    /// Totals for the manifest.
    pub totals: Totals,
    /// Packing details, for packed output.
    pub packing: Option<Packing>,
    /// Tokens of the documents (padding excluded, dropped tail excluded).
    pub num_document_tokens: u64,
}

/// The prefix of shard `index` in `dir`.
pub fn shard_prefix(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("shard_{index:05}"))
}

impl ShardSink {
    /// Continues from `state` (use `SinkState::default()` for a fresh start): the next shard is written in
    /// `staging` and published into `dir` when full.
    pub fn new(
        dir: &Path,
        staging: &Path,
        dtype: TokenDtype,
        layout: Layout,
        shard_tokens: u64,
        state: SinkState,
    ) -> anyhow::Result<Self> {
        let prefix = shard_prefix(staging, state.shards.len());
        let writer = match layout {
            Layout::Megatron => Writer::Megatron(IndexedDatasetBuilder::create(&prefix, dtype)?),
            Layout::Packed { seq_len, .. } => {
                let (window, offsets) = state.carry.unwrap_or_else(|| (Vec::new(), vec![0]));
                let counts = (state.num_documents, state.num_document_tokens);
                Writer::Packed(PackedWriter::resume(
                    &prefix,
                    dtype,
                    seq_len,
                    (&window, &offsets),
                    counts,
                )?)
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            staging: staging.to_path_buf(),
            layout,
            shard_tokens: shard_tokens.max(1),
            writer,
            shards: state.shards,
            num_documents: state.num_documents,
            num_document_tokens: state.num_document_tokens,
        })
    }

    /// Whether the current shard is full, so that [`rotate`](Self::rotate) must run before the next document.
    pub fn is_full(&self) -> bool {
        match (&self.writer, self.layout) {
            (Writer::Megatron(builder), _) => builder.num_tokens() >= self.shard_tokens,
            (Writer::Packed(writer), Layout::Packed { seq_len, .. }) => {
                writer.num_windows() * u64::from(seq_len) >= self.shard_tokens
            }
            (Writer::Packed(_), Layout::Megatron) => unreachable!("writer follows layout"),
        }
    }

    /// Publishes the current shard, starts the next, and returns the state to journal.
    pub fn rotate(&mut self) -> anyhow::Result<SinkState> {
        let next = shard_prefix(&self.staging, self.shards.len() + 1);
        let entry = match &mut self.writer {
            Writer::Megatron(builder) => {
                let full = std::mem::replace(
                    builder,
                    IndexedDatasetBuilder::create(&next, builder.dtype())?,
                );
                ShardEntry::from_summary(&self.staging, &full.finalize()?)
            }
            Writer::Packed(writer) => {
                let summary = writer.rotate(&next)?;
                let mut entry = ShardEntry::from_summary(&self.staging, &summary.tokens);
                entry.cu_seqlens = Some(FilePair {
                    bin: summary.cu_seqlens.bin,
                    idx: summary.cu_seqlens.idx,
                });
                entry
            }
        };
        publish_shard(&self.staging, &self.dir, &entry)?;
        self.shards.push(entry);
        let carry = match &self.writer {
            Writer::Packed(writer) => Some((writer.carry().0.to_vec(), writer.carry().1.to_vec())),
            Writer::Megatron(_) => None,
        };
        Ok(SinkState {
            shards: self.shards.clone(),
            num_documents: self.num_documents,
            num_document_tokens: self.num_document_tokens,
            carry,
        })
    }

    /// Appends one document; call [`is_full`](Self::is_full) / [`rotate`](Self::rotate) first.
    ///
    /// A document without tokens (an empty text, unless the tokenizer adds some) is a Megatron document of
    /// zero sequences, as `preprocess_data.py` writes it (`add_document([], [])`: one more
    /// `document_indices` entry, no sequence); in packed output it leaves no trace but the count.
    pub fn add_document(&mut self, tokens: &[u32]) -> anyhow::Result<()> {
        match &mut self.writer {
            Writer::Megatron(builder) => {
                if !tokens.is_empty() {
                    builder.add_item(tokens)?;
                }
                builder.end_document()?;
            }
            Writer::Packed(writer) => writer.add_document(tokens)?,
        }
        self.num_documents += 1;
        self.num_document_tokens += tokens.len() as u64;
        Ok(())
    }

    /// Publishes the last shard and describes them all.
    pub fn finish(self) -> anyhow::Result<SinkSummary> {
        let mut shards = self.shards;
        let (entry, packing, num_document_tokens) = match (self.writer, self.layout) {
            (Writer::Megatron(builder), _) => (
                ShardEntry::from_summary(&self.staging, &builder.finalize()?),
                None,
                self.num_document_tokens,
            ),
            (Writer::Packed(writer), Layout::Packed { seq_len, tail }) => {
                let summary = writer.finish(tail)?;
                let mut entry = ShardEntry::from_summary(&self.staging, &summary.tokens);
                entry.cu_seqlens = Some(FilePair {
                    bin: summary.cu_seqlens.bin,
                    idx: summary.cu_seqlens.idx,
                });
                let packing = Packing {
                    seq_len,
                    tail,
                    dropped_tokens: summary.num_dropped_tokens,
                    pad_tokens: summary.num_pad_tokens,
                };
                (entry, Some(packing), summary.num_document_tokens)
            }
            (Writer::Packed(_), Layout::Megatron) => unreachable!("writer follows layout"),
        };
        publish_shard(&self.staging, &self.dir, &entry)?;
        shards.push(entry);
        let totals = Totals {
            documents: self.num_documents,
            // The sink sees tokens, not texts: the caller, who read the texts, fills this in.
            empty_documents: 0,
            sequences: shards.iter().map(|s| s.sequences).sum(),
            tokens: shards.iter().map(|s| s.tokens).sum(),
        };
        Ok(SinkSummary {
            shards,
            totals,
            packing,
            num_document_tokens,
        })
    }
}

/// Moves a finished shard (and its `_cu_seqlens` pair) from `staging` into `dir`, `.bin` before `.idx`.
fn publish_shard(staging: &Path, dir: &Path, shard: &ShardEntry) -> anyhow::Result<()> {
    let prefix = staging.join(&shard.prefix);
    let mut prefixes = vec![prefix.clone()];
    if shard.cu_seqlens.is_some() {
        prefixes.push(cu_seqlens_prefix(&prefix));
    }
    for from in prefixes {
        let to = dir.join(from.file_name().expect("a shard prefix"));
        publish(&bin_path(&from), &bin_path(&to))?;
        publish(&idx_path(&from), &idx_path(&to))?;
    }
    Ok(())
}
