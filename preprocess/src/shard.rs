//! Writing tokenized documents as numbered shards, Megatron or packed, and describing them for the manifest.

use std::path::{Path, PathBuf};

use flame_formats::manifest::{FilePair, Packing, ShardEntry, Totals};
use flame_formats::{IndexedDatasetBuilder, PackedWriter, TailPolicy, TokenDtype};

/// How documents are laid out in shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One document per sequence (Megatron's `_text_document`).
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

/// Receives documents in order; cuts a new shard once the current one holds `shard_tokens` tokens.
#[derive(Debug)]
pub struct ShardSink {
    dir: PathBuf,
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
    /// Starts shard 0 in `dir`.
    pub fn create(
        dir: &Path,
        dtype: TokenDtype,
        layout: Layout,
        shard_tokens: u64,
    ) -> anyhow::Result<Self> {
        let first = shard_prefix(dir, 0);
        let writer = match layout {
            Layout::Megatron => Writer::Megatron(IndexedDatasetBuilder::create(&first, dtype)?),
            Layout::Packed { seq_len, .. } => {
                Writer::Packed(PackedWriter::create(&first, dtype, seq_len)?)
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            layout,
            shard_tokens: shard_tokens.max(1),
            writer,
            shards: Vec::new(),
            num_documents: 0,
            num_document_tokens: 0,
        })
    }

    /// Appends one document.
    pub fn add_document(&mut self, tokens: &[u32]) -> anyhow::Result<()> {
        self.rotate_if_full()?;
        match &mut self.writer {
            Writer::Megatron(builder) => {
                builder.add_item(tokens)?;
                builder.end_document()?;
            }
            Writer::Packed(writer) => writer.add_document(tokens)?,
        }
        self.num_documents += 1;
        self.num_document_tokens += tokens.len() as u64;
        Ok(())
    }

    /// Rotation happens before a document is added, so the last shard is never empty.
    fn rotate_if_full(&mut self) -> anyhow::Result<()> {
        let next = shard_prefix(&self.dir, self.shards.len() + 1);
        match (&mut self.writer, self.layout) {
            (Writer::Megatron(builder), _) if builder.num_tokens() >= self.shard_tokens => {
                let full = std::mem::replace(
                    builder,
                    IndexedDatasetBuilder::create(&next, builder.dtype())?,
                );
                let summary = full.finalize()?;
                self.shards
                    .push(ShardEntry::from_summary(&self.dir, &summary));
            }
            (Writer::Packed(writer), Layout::Packed { seq_len, .. })
                if writer.num_windows() * u64::from(seq_len) >= self.shard_tokens =>
            {
                let summary = writer.rotate(&next)?;
                let mut entry = ShardEntry::from_summary(&self.dir, &summary.tokens);
                entry.cu_seqlens = Some(FilePair {
                    bin: summary.cu_seqlens.bin,
                    idx: summary.cu_seqlens.idx,
                });
                self.shards.push(entry);
            }
            _ => {}
        }
        Ok(())
    }

    /// Publishes the last shard and describes them all.
    pub fn finish(self) -> anyhow::Result<SinkSummary> {
        let mut shards = self.shards;
        let (packing, num_document_tokens) = match (self.writer, self.layout) {
            (Writer::Megatron(builder), _) => {
                shards.push(ShardEntry::from_summary(&self.dir, &builder.finalize()?));
                (None, self.num_document_tokens)
            }
            (Writer::Packed(writer), Layout::Packed { seq_len, tail }) => {
                let summary = writer.finish(tail)?;
                let mut entry = ShardEntry::from_summary(&self.dir, &summary.tokens);
                entry.cu_seqlens = Some(FilePair {
                    bin: summary.cu_seqlens.bin,
                    idx: summary.cu_seqlens.idx,
                });
                shards.push(entry);
                let packing = Packing {
                    seq_len,
                    tail,
                    dropped_tokens: summary.num_dropped_tokens,
                    pad_tokens: summary.num_pad_tokens,
                };
                (Some(packing), summary.num_document_tokens)
            }
            (Writer::Packed(_), Layout::Megatron) => unreachable!("writer follows layout"),
        };
        let totals = Totals {
            documents: self.num_documents,
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
