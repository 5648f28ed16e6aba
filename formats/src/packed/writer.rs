//! Cutting a stream of documents into packed windows.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cu_seqlens_prefix;
use crate::dtype::TokenDtype;
use crate::error::{Error, Result};
use crate::megatron::{DatasetSummary, IndexedDatasetBuilder};

/// What to do with the last window when the documents run out before it is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum TailPolicy {
    /// Drop the partial window; its tokens are reported as dropped.
    Drop,
    /// Fill the window with `pad_id`; the padding is its own segment in `cu_seqlens`.
    Pad {
        /// The token id to pad with.
        pad_id: u32,
    },
}

/// What [`PackedWriter::finish`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedSummary {
    /// The tokens dataset.
    pub tokens: DatasetSummary,
    /// The offsets dataset.
    pub cu_seqlens: DatasetSummary,
    /// Tokens per window.
    pub seq_len: u32,
    /// Windows written.
    pub num_windows: u64,
    /// Documents consumed, empty ones included.
    pub num_documents: u64,
    /// Document tokens written (padding excluded).
    pub num_document_tokens: u64,
    /// Tokens of the final partial window that [`TailPolicy::Drop`] dropped.
    pub num_dropped_tokens: u64,
    /// Padding tokens that [`TailPolicy::Pad`] added.
    pub num_pad_tokens: u64,
}

/// Writes a packed dataset from documents given in order.
#[derive(Debug)]
pub struct PackedWriter {
    tokens: IndexedDatasetBuilder,
    cu_seqlens: IndexedDatasetBuilder,
    seq_len: usize,
    window: Vec<u32>,
    offsets: Vec<u32>,
    num_documents: u64,
    num_document_tokens: u64,
}

impl PackedWriter {
    /// Starts a packed dataset at `prefix` (and `PREFIX_cu_seqlens`) with windows of `seq_len` tokens.
    pub fn create(prefix: impl AsRef<Path>, dtype: TokenDtype, seq_len: u32) -> Result<Self> {
        let prefix = prefix.as_ref();
        if seq_len == 0 || i32::try_from(seq_len).is_err() {
            return Err(Error::Usage {
                path: prefix.into(),
                reason: format!("seq_len must be in 1..=2^31-1, got {seq_len}"),
            });
        }
        let tokens = IndexedDatasetBuilder::create(prefix, dtype)?;
        let cu_seqlens =
            IndexedDatasetBuilder::create(cu_seqlens_prefix(tokens.prefix()), TokenDtype::Int32)?;
        Ok(Self {
            tokens,
            cu_seqlens,
            seq_len: seq_len as usize,
            window: Vec::with_capacity(seq_len as usize),
            offsets: vec![0],
            num_documents: 0,
            num_document_tokens: 0,
        })
    }

    /// Windows completed so far.
    pub fn num_windows(&self) -> u64 {
        self.tokens.num_sequences()
    }

    /// The partial window not yet written: its tokens and the offsets of document starts in it
    /// (beginning with 0). Together with the document counts this is all the state a resumed run needs.
    pub fn carry(&self) -> (&[u32], &[u32]) {
        (&self.window, &self.offsets)
    }

    /// Documents added so far and their tokens.
    pub fn num_documents(&self) -> (u64, u64) {
        (self.num_documents, self.num_document_tokens)
    }

    /// Starts a packed dataset that continues an earlier writer's stream: `carry` is what
    /// [`carry`](Self::carry) returned, `num_documents` what [`num_documents`](Self::num_documents) returned.
    pub fn resume(
        prefix: impl AsRef<Path>,
        dtype: TokenDtype,
        seq_len: u32,
        carry: (&[u32], &[u32]),
        num_documents: (u64, u64),
    ) -> Result<Self> {
        let mut writer = Self::create(prefix, dtype, seq_len)?;
        let (window, offsets) = carry;
        let is_valid = window.len() < writer.seq_len
            && offsets.first() == Some(&0)
            && offsets.windows(2).all(|w| w[0] < w[1])
            && offsets
                .last()
                .is_some_and(|&o| (o as usize) < window.len().max(1));
        if !is_valid {
            return Err(Error::Usage {
                path: writer.tokens.prefix().into(),
                reason: format!(
                    "invalid carry: {} tokens, offsets {offsets:?}",
                    window.len()
                ),
            });
        }
        writer.window.extend_from_slice(window);
        writer.offsets = offsets.to_vec();
        (writer.num_documents, writer.num_document_tokens) = num_documents;
        Ok(writer)
    }

    /// Appends one document. It fills the current window and as many next ones as it needs.
    pub fn add_document(&mut self, tokens: &[u32]) -> Result<()> {
        self.num_documents += 1;
        self.num_document_tokens += tokens.len() as u64;
        if tokens.is_empty() {
            return Ok(());
        }
        if !self.window.is_empty() {
            self.offsets
                .push(u32::try_from(self.window.len()).expect("below seq_len"));
        }
        let mut rest = tokens;
        while !rest.is_empty() {
            let take = (self.seq_len - self.window.len()).min(rest.len());
            self.window.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.window.len() == self.seq_len {
                self.flush_window()?;
            }
        }
        Ok(())
    }

    /// Publishes the windows completed so far as one shard and continues in a new shard at `next_prefix`.
    ///
    /// A partial window is not cut: it stays in memory and becomes the first window of the next shard.
    /// The summary's per-shard fields (`tokens`, `cu_seqlens`, `num_windows`) cover this shard; the
    /// document counts cover everything added so far, and the tail fields are zero.
    pub fn rotate(&mut self, next_prefix: impl AsRef<Path>) -> Result<PackedSummary> {
        let tokens = IndexedDatasetBuilder::create(next_prefix.as_ref(), self.tokens.dtype())?;
        let cu_seqlens =
            IndexedDatasetBuilder::create(cu_seqlens_prefix(tokens.prefix()), TokenDtype::Int32)?;
        let old_tokens = std::mem::replace(&mut self.tokens, tokens);
        let old_cu_seqlens = std::mem::replace(&mut self.cu_seqlens, cu_seqlens);
        let num_windows = old_tokens.num_sequences();
        Ok(PackedSummary {
            tokens: old_tokens.finalize()?,
            cu_seqlens: old_cu_seqlens.finalize()?,
            seq_len: u32::try_from(self.seq_len).expect("checked in create"),
            num_windows,
            num_documents: self.num_documents,
            num_document_tokens: self.num_document_tokens,
            num_dropped_tokens: 0,
            num_pad_tokens: 0,
        })
    }

    /// Ends the dataset, handling a partial last window by `tail`, and publishes both datasets.
    pub fn finish(mut self, tail: TailPolicy) -> Result<PackedSummary> {
        let (mut num_dropped_tokens, mut num_pad_tokens) = (0, 0);
        if !self.window.is_empty() {
            match tail {
                TailPolicy::Drop => num_dropped_tokens = self.window.len() as u64,
                TailPolicy::Pad { pad_id } => {
                    num_pad_tokens = (self.seq_len - self.window.len()) as u64;
                    self.offsets
                        .push(u32::try_from(self.window.len()).expect("below seq_len"));
                    self.window.resize(self.seq_len, pad_id);
                    self.flush_window()?;
                }
            }
        }
        let num_windows = self.tokens.num_sequences();
        Ok(PackedSummary {
            tokens: self.tokens.finalize()?,
            cu_seqlens: self.cu_seqlens.finalize()?,
            seq_len: u32::try_from(self.seq_len).expect("checked in create"),
            num_windows,
            num_documents: self.num_documents,
            num_document_tokens: self.num_document_tokens - num_dropped_tokens,
            num_dropped_tokens,
            num_pad_tokens,
        })
    }

    fn flush_window(&mut self) -> Result<()> {
        self.offsets
            .push(u32::try_from(self.seq_len).expect("checked in create"));
        self.tokens.add_item(&self.window)?;
        self.tokens.end_document()?;
        self.cu_seqlens.add_item(&self.offsets)?;
        self.cu_seqlens.end_document()?;
        self.window.clear();
        self.offsets.clear();
        self.offsets.push(0);
        Ok(())
    }
}
