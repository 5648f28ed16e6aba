//! A [`Corpus`] is whatever a user points a tool at: a flame-prep output directory (with `manifest.json`),
//! one Megatron prefix, or a directory of prefixes. It presents the shards as one sequence space.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dtype::TokenDtype;
use crate::error::{Error, Result};
use crate::manifest::{MANIFEST_FILE_NAME, Manifest, VerifyReport};
use crate::megatron::{IndexedDataset, TokenSlice};
use crate::packed::{PackedDataset, cu_seqlens_prefix, is_packed};
use crate::prefix::{discover_prefixes, idx_path, normalize_prefix};

/// One shard of a corpus.
#[derive(Debug)]
pub enum Shard {
    /// A document-level dataset.
    Megatron(IndexedDataset<Mmap>),
    /// A packed dataset.
    Packed(PackedDataset<Mmap>),
}

impl Shard {
    /// The tokens dataset.
    pub fn tokens(&self) -> &IndexedDataset<Mmap> {
        match self {
            Self::Megatron(d) => d,
            Self::Packed(p) => p.tokens(),
        }
    }
}

/// Shards opened from one path, addressed by a global sequence index.
#[derive(Debug)]
pub struct Corpus {
    root: PathBuf,
    manifest: Option<Manifest>,
    shards: Vec<Shard>,
    /// `sequence_starts[k]` is the global index of shard `k`'s first sequence; one extra entry at the end.
    sequence_starts: Vec<u64>,
}

impl Corpus {
    /// Opens a manifest directory (or its `manifest.json`), a prefix (or its `.idx`/`.bin`), or a
    /// directory of prefixes taken in natural order.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let is_manifest_file =
            path.file_name().is_some_and(|n| n == MANIFEST_FILE_NAME) && path.is_file();
        if is_manifest_file || path.join(MANIFEST_FILE_NAME).is_file() {
            let root = if is_manifest_file {
                path.parent().unwrap_or(Path::new(".")).to_path_buf()
            } else {
                path.to_path_buf()
            };
            let manifest = Manifest::load(path)?;
            let prefixes = manifest.shard_prefixes(&root);
            let is_packed = manifest.packing.is_some();
            let shards = prefixes
                .iter()
                .map(|p| open_shard(p, is_packed))
                .collect::<Result<Vec<_>>>()?;
            return Self::from_shards(root, Some(manifest), shards);
        }
        // A Megatron prefix wins over a directory of the same name: Megatron keeps its index cache in
        // `PREFIX/cache/GPTDataset_indices/` by default.
        let prefixes = if path.is_dir() && !idx_path(&normalize_prefix(path)).is_file() {
            let all = discover_prefixes(path)?;
            // A packed pair shows up as PREFIX and PREFIX_cu_seqlens; the second is part of the first.
            let companions: Vec<PathBuf> = all.iter().map(|p| cu_seqlens_prefix(p)).collect();
            all.into_iter()
                .filter(|p| !companions.contains(p))
                .collect()
        } else {
            let prefix = normalize_prefix(path);
            if !idx_path(&prefix).exists() && !crate::prefix::bin_path(&prefix).exists() {
                return Err(Error::NotADataset { path: path.into() });
            }
            vec![prefix]
        };
        if prefixes.is_empty() {
            return Err(Error::NotADataset { path: path.into() });
        }
        let shards = prefixes
            .iter()
            .map(|p| open_shard(p, is_packed(p)))
            .collect::<Result<Vec<_>>>()?;
        Self::from_shards(path.to_path_buf(), None, shards)
    }

    fn from_shards(root: PathBuf, manifest: Option<Manifest>, shards: Vec<Shard>) -> Result<Self> {
        let mut sequence_starts = Vec::with_capacity(shards.len() + 1);
        let mut total = 0;
        for shard in &shards {
            sequence_starts.push(total);
            total += shard.tokens().num_sequences();
        }
        sequence_starts.push(total);
        if let Some(first) = shards.first() {
            for shard in &shards[1..] {
                if shard.tokens().dtype() != first.tokens().dtype() {
                    return Err(Error::Incompatible {
                        path: shard.tokens().prefix().into(),
                        reason: format!(
                            "it holds {}, the first shard holds {}",
                            shard.tokens().dtype(),
                            first.tokens().dtype()
                        ),
                    });
                }
            }
        }
        Ok(Self {
            root,
            manifest,
            shards,
            sequence_starts,
        })
    }

    /// The path the corpus was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The manifest, when the corpus has one.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The token dtype (`None` only for a corpus with no shards).
    pub fn dtype(&self) -> Option<TokenDtype> {
        self.shards.first().map(|s| s.tokens().dtype())
    }

    /// Sequences over all shards.
    pub fn num_sequences(&self) -> u64 {
        *self
            .sequence_starts
            .last()
            .expect("one more entry than shards")
    }

    /// Documents over all shards (windows, for packed shards).
    pub fn num_documents(&self) -> u64 {
        self.shards.iter().map(|s| s.tokens().num_documents()).sum()
    }

    /// Tokens over all shards.
    pub fn num_tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.tokens().num_tokens()).sum()
    }

    /// Sequence `i` of the concatenation of all shards.
    pub fn sequence(&self, i: u64) -> Result<TokenSlice<'_>> {
        let (shard, local) = self.locate(i)?;
        shard.tokens().sequence(local)
    }

    /// The shard holding global sequence `i`, and its index there.
    fn locate(&self, i: u64) -> Result<(&Shard, u64)> {
        if i >= self.num_sequences() {
            return Err(Error::OutOfRange {
                path: self.root.clone(),
                what: "sequence",
                index: i,
                count: self.num_sequences(),
            });
        }
        let shard = self.sequence_starts.partition_point(|&start| start <= i) - 1;
        Ok((&self.shards[shard], i - self.sequence_starts[shard]))
    }

    /// The window length when every shard is packed (flame-prep's packed output), else `None`.
    pub fn packed_seq_len(&self) -> Option<u32> {
        let mut seq_len = None;
        for shard in &self.shards {
            match shard {
                Shard::Packed(p) if seq_len.is_none_or(|s| s == p.seq_len()) => {
                    seq_len = Some(p.seq_len());
                }
                _ => return None,
            }
        }
        seq_len
    }

    /// The stored `cu_seqlens` of sequence `i` when it is a packed window (`None` for a document).
    pub fn window_cu_seqlens(&self, i: u64) -> Result<Option<Vec<u32>>> {
        match self.locate(i)? {
            (Shard::Megatron(_), _) => Ok(None),
            (Shard::Packed(p), local) => {
                let window = p.window(local)?;
                #[allow(clippy::cast_sign_loss)] // checked to rise from 0
                Ok(Some(window.cu_seqlens.iter().map(|&c| c as u32).collect()))
            }
        }
    }

    /// Checks everything: with a manifest, sizes and checksums of every file too; without, the format's invariants.
    pub fn verify(&self) -> Result<VerifyReport> {
        if let Some(manifest) = &self.manifest {
            return manifest.verify(&self.root);
        }
        for shard in &self.shards {
            match shard {
                Shard::Megatron(d) => d.validate()?,
                Shard::Packed(p) => p.validate()?,
            }
        }
        Ok(VerifyReport {
            num_shards: self.shards.len() as u64,
            ..VerifyReport::default()
        })
    }
}

fn open_shard(prefix: &Path, is_packed: bool) -> Result<Shard> {
    Ok(if is_packed {
        Shard::Packed(PackedDataset::open(prefix)?)
    } else {
        Shard::Megatron(IndexedDataset::open(prefix)?)
    })
}
