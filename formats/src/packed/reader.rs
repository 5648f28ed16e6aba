//! Reading packed windows.

use std::path::Path;

use memmap2::Mmap;

use super::cu_seqlens_prefix;
use crate::dtype::TokenDtype;
use crate::error::{Error, Result};
use crate::megatron::{IndexedDataset, TokenSlice};
use crate::prefix::normalize_prefix;

/// One window: `seq_len` tokens and the document starts inside it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window<'a> {
    /// Exactly `seq_len` tokens.
    pub tokens: TokenSlice<'a>,
    /// `[0, …, seq_len]`, strictly increasing.
    pub cu_seqlens: &'a [i32],
}

/// A packed dataset opened for reading.
#[derive(Debug)]
pub struct PackedDataset<S = Mmap> {
    tokens: IndexedDataset<S>,
    cu_seqlens: IndexedDataset<S>,
    seq_len: u32,
}

impl PackedDataset<Mmap> {
    /// Opens `PREFIX` and `PREFIX_cu_seqlens`; `seq_len` is taken from the first window.
    pub fn open(prefix: impl AsRef<Path>) -> Result<Self> {
        let prefix = normalize_prefix(prefix.as_ref());
        let tokens = IndexedDataset::open(&prefix)?;
        let cu_seqlens = IndexedDataset::open(cu_seqlens_prefix(&prefix))?;
        Self::new(tokens, cu_seqlens)
    }
}

impl<S: AsRef<[u8]>> PackedDataset<S> {
    /// Pairs a tokens dataset with its offsets dataset.
    pub fn new(tokens: IndexedDataset<S>, cu_seqlens: IndexedDataset<S>) -> Result<Self> {
        if cu_seqlens.dtype() != TokenDtype::Int32 {
            return Err(Error::DtypeMismatch {
                path: cu_seqlens.prefix().into(),
                actual: cu_seqlens.dtype(),
                requested: TokenDtype::Int32,
            });
        }
        if cu_seqlens.num_sequences() != tokens.num_sequences() {
            return Err(Error::Incompatible {
                path: cu_seqlens.prefix().into(),
                reason: format!(
                    "{} offset lists for {} windows",
                    cu_seqlens.num_sequences(),
                    tokens.num_sequences()
                ),
            });
        }
        let seq_len = if tokens.num_sequences() == 0 {
            0
        } else {
            tokens.sequence_len(0)?
        };
        Ok(Self {
            tokens,
            cu_seqlens,
            seq_len,
        })
    }

    /// Tokens per window (0 for an empty dataset).
    pub fn seq_len(&self) -> u32 {
        self.seq_len
    }

    /// Number of windows.
    pub fn num_windows(&self) -> u64 {
        self.tokens.num_sequences()
    }

    /// The tokens dataset.
    pub fn tokens(&self) -> &IndexedDataset<S> {
        &self.tokens
    }

    /// The offsets dataset.
    pub fn cu_seqlens(&self) -> &IndexedDataset<S> {
        &self.cu_seqlens
    }

    /// Window `i`, zero-copy, with its invariants checked.
    pub fn window(&self, i: u64) -> Result<Window<'_>> {
        let tokens = self.tokens.sequence(i)?;
        let cu_seqlens = self.cu_seqlens.sequence_as::<i32>(i)?;
        let corrupt = |reason: String| Error::CorruptWindow {
            path: self.tokens.prefix().into(),
            window: i,
            reason,
        };
        if tokens.len() != self.seq_len as usize {
            return Err(corrupt(format!(
                "holds {} tokens, the dataset's windows hold {}",
                tokens.len(),
                self.seq_len
            )));
        }
        let seq_len = i32::try_from(self.seq_len).expect("lengths are i32");
        let is_valid = cu_seqlens.len() >= 2
            && cu_seqlens[0] == 0
            && cu_seqlens[cu_seqlens.len() - 1] == seq_len
            && cu_seqlens.windows(2).all(|w| w[0] < w[1]);
        if !is_valid {
            return Err(corrupt(format!(
                "cu_seqlens {cu_seqlens:?} must rise strictly from 0 to {seq_len}"
            )));
        }
        Ok(Window { tokens, cu_seqlens })
    }

    /// Checks both datasets and every window.
    pub fn validate(&self) -> Result<()> {
        self.tokens.validate()?;
        self.cu_seqlens.validate()?;
        for i in 0..self.num_windows() {
            self.window(i)?;
        }
        Ok(())
    }
}

/// Whether `prefix` has a `_cu_seqlens` companion, i.e. is packed.
pub(crate) fn is_packed(prefix: &Path) -> bool {
    crate::prefix::idx_path(&cu_seqlens_prefix(prefix)).exists()
}
