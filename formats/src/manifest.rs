//! `manifest.json`: what a flame-prep output directory holds, and how to check it.
//!
//! The manifest is the commit point of a run: shards are published first, the manifest last, so a
//! directory with a manifest is complete. Schema, version 1 (all fields required unless marked optional):
//!
//! ```json
//! {
//!   "version": 1,
//!   "format": "megatron",                  // or "packed"
//!   "dtype": "uint16",                     // numpy name of the token dtype
//!   "packing": null,                       // packed only: {"seq_len", "tail": {"policy": "drop"|"pad", "pad_id"?},
//!                                          //               "dropped_tokens", "pad_tokens"}
//!   "tokenizer": {"name": "gpt2", "sha256": "<of tokenizer.json>", "vocab_size": 50257,
//!                 "bos_id": null, "eos_id": 50256},
//!   "totals": {"documents": 2224, "empty_documents": 0,   // empty_documents: optional, 0 when absent
//!              "sequences": 2224, "tokens": 13600000},
//!   "shards": [{"prefix": "shard_00000",   // relative to the manifest's directory
//!               "sequences": 2224, "documents": 2224, "tokens": 13600000,
//!               "bin": {"bytes": 27200000, "sha256": "…"}, "idx": {"bytes": 44534, "sha256": "…"},
//!               "cu_seqlens": null}],      // packed only: {"bin": {…}, "idx": {…}} of PREFIX_cu_seqlens
//!   "sources": [{"uri": "data/train-00000-of-00002.parquet", "bytes": 12425227, "sha256": null}],
//!   "parameters": {"context_length": 2048},  // free-form: what produced the shards
//!   "created_by": "flame-prep 0.1.0"
//! }
//! ```
//!
//! Shard counts are those of the shard's tokens index (for packed shards a window is one sequence and one
//! document). `totals.documents` counts source documents, which for `megatron` equals the shards' sum;
//! `totals.empty_documents` counts those of them whose text was empty (they are documents all the same:
//! their tokens are whatever the tokenizer adds to nothing, possibly none).
//! A newer `version` is refused rather than half-understood.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dtype::TokenDtype;
use crate::durable::{sha256_file, write_atomic};
use crate::error::{Error, Result};
use crate::megatron::{DatasetSummary, FileDigest, IndexedDataset};
use crate::packed::{PackedDataset, TailPolicy, cu_seqlens_prefix};
use crate::prefix::{bin_path, idx_path};

/// The manifest's file name inside an output directory.
pub const MANIFEST_FILE_NAME: &str = "manifest.json";
/// The schema version this build writes and the newest it reads.
pub const MANIFEST_VERSION: u32 = 1;

/// How the shards lay out tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardFormat {
    /// Document-level Megatron `.bin/.idx`.
    Megatron,
    /// Packed varlen windows (see [`crate::packed`]).
    Packed,
}

/// The contents of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version, [`MANIFEST_VERSION`].
    pub version: u32,
    /// Shard layout.
    pub format: ShardFormat,
    /// Token dtype of every shard.
    pub dtype: TokenDtype,
    /// Packing parameters; `Some` exactly when `format` is packed.
    #[serde(default)]
    pub packing: Option<Packing>,
    /// The tokenizer that produced the ids.
    pub tokenizer: TokenizerIdentity,
    /// Sums over the shards.
    pub totals: Totals,
    /// The shards, in order.
    pub shards: Vec<ShardEntry>,
    /// The inputs, in the order they were read.
    pub sources: Vec<SourceEntry>,
    /// The parameters of the run that produced this output.
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// Program and version.
    pub created_by: String,
}

/// Packing parameters and what the tail policy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packing {
    /// Tokens per window.
    pub seq_len: u32,
    /// What happened to the final partial window.
    pub tail: TailPolicy,
    /// Tokens dropped with the final partial window.
    pub dropped_tokens: u64,
    /// Padding tokens in the final window.
    pub pad_tokens: u64,
}

/// Which tokenizer produced the ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerIdentity {
    /// A human name (hub id or path), optional.
    #[serde(default)]
    pub name: Option<String>,
    /// SHA-256 of `tokenizer.json`, lower-case hex.
    pub sha256: String,
    /// Vocabulary size including added tokens.
    pub vocab_size: u64,
    /// Beginning-of-sequence id, if the tokenizer has one.
    pub bos_id: Option<u32>,
    /// End-of-sequence id, if the tokenizer has one.
    pub eos_id: Option<u32>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Totals of a manifest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Source documents.
    pub documents: u64,
    /// Source documents whose text was empty (part of `documents`). Manifests written before it was
    /// counted lack the field: it reads as 0; it is written only when not 0, so that readers from
    /// before it still read the manifests of corpora without empty texts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub empty_documents: u64,
    /// Sequences over all shards (windows, for packed).
    pub sequences: u64,
    /// Tokens over all shards (padding included).
    pub tokens: u64,
}

/// One shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// Prefix relative to the manifest's directory.
    pub prefix: String,
    /// Sequences in the tokens index.
    pub sequences: u64,
    /// Documents in the tokens index.
    pub documents: u64,
    /// Tokens in the `.bin`.
    pub tokens: u64,
    /// The `.bin`.
    pub bin: FileDigest,
    /// The `.idx`.
    pub idx: FileDigest,
    /// The `_cu_seqlens` pair, packed only.
    #[serde(default)]
    pub cu_seqlens: Option<FilePair>,
}

/// Digests of a `.bin` and its `.idx`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePair {
    /// The `.bin`.
    pub bin: FileDigest,
    /// The `.idx`.
    pub idx: FileDigest,
}

/// One input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    /// Path or URL as given.
    pub uri: String,
    /// Size in bytes, when known.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// SHA-256, when computed.
    #[serde(default)]
    pub sha256: Option<String>,
}

impl ShardEntry {
    /// The entry for a Megatron shard, its prefix made relative to `root`.
    pub fn from_summary(root: &Path, summary: &DatasetSummary) -> Self {
        Self {
            prefix: relative_prefix(root, &summary.prefix),
            sequences: summary.num_sequences,
            documents: summary.num_documents,
            tokens: summary.num_tokens,
            bin: summary.bin.clone(),
            idx: summary.idx.clone(),
            cu_seqlens: None,
        }
    }
}

fn relative_prefix(root: &Path, prefix: &Path) -> String {
    prefix
        .strip_prefix(root)
        .unwrap_or(prefix)
        .to_string_lossy()
        .into_owned()
}

/// What [`Manifest::verify`] checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Shards checked.
    pub num_shards: u64,
    /// Files hashed.
    pub num_files: u64,
    /// Bytes hashed.
    pub num_bytes: u64,
}

impl Manifest {
    /// The manifest path for `path`, a directory or the manifest file itself.
    pub fn path_in(path: &Path) -> PathBuf {
        if path.is_dir() {
            path.join(MANIFEST_FILE_NAME)
        } else {
            path.to_path_buf()
        }
    }

    /// Reads and parses a manifest from a directory or a manifest path.
    pub fn load(path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let path = Self::path_in(path);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, "read", e))?;
        let syntax = |e: serde_json::Error| Error::ManifestSyntax {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        };
        let version: VersionOnly = serde_json::from_slice(&bytes).map_err(syntax)?;
        if version.version > MANIFEST_VERSION {
            return Err(Error::UnsupportedManifestVersion {
                path,
                found: version.version,
                supported: MANIFEST_VERSION,
            });
        }
        let manifest: Self = serde_json::from_slice(&bytes).map_err(syntax)?;
        manifest.check_schema(&path)?;
        Ok(manifest)
    }

    /// Writes `DIR/manifest.json` atomically; call it after every shard is published.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(MANIFEST_FILE_NAME);
        self.check_schema(&path)?;
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        json.push(b'\n');
        write_atomic(&path, &json)?;
        Ok(path)
    }

    /// Absolute (or root-relative) prefixes of the shards, in order.
    pub fn shard_prefixes(&self, root: &Path) -> Vec<PathBuf> {
        self.shards.iter().map(|s| root.join(&s.prefix)).collect()
    }

    /// Rules serde cannot express: relative prefixes inside the directory, packing iff packed, sums.
    fn check_schema(&self, path: &Path) -> Result<()> {
        let invalid = |reason: String| {
            Err(Error::InvalidManifest {
                path: path.into(),
                reason,
            })
        };
        if (self.format == ShardFormat::Packed) != self.packing.is_some() {
            return invalid(
                "\"packing\" must be present exactly when \"format\" is \"packed\"".into(),
            );
        }
        for shard in &self.shards {
            let prefix = Path::new(&shard.prefix);
            if prefix.is_absolute()
                || prefix
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return invalid(format!(
                    "shard prefix {:?} must be a relative path inside the manifest's directory",
                    shard.prefix
                ));
            }
            if (self.format == ShardFormat::Packed) != shard.cu_seqlens.is_some() {
                return invalid(format!(
                    "shard {:?}: \"cu_seqlens\" must be present exactly when \"format\" is \"packed\"",
                    shard.prefix
                ));
            }
        }
        let sum = |f: fn(&ShardEntry) -> u64| self.shards.iter().map(f).sum::<u64>();
        let checks = [
            (
                "totals.sequences",
                self.totals.sequences,
                sum(|s| s.sequences),
            ),
            ("totals.tokens", self.totals.tokens, sum(|s| s.tokens)),
        ];
        for (what, total, shards) in checks {
            if total != shards {
                return invalid(format!("{what} is {total}, the shards sum to {shards}"));
            }
        }
        if self.totals.empty_documents > self.totals.documents {
            return invalid(format!(
                "totals.empty_documents is {}, more than totals.documents ({})",
                self.totals.empty_documents, self.totals.documents
            ));
        }
        if self.format == ShardFormat::Megatron && self.totals.documents != sum(|s| s.documents) {
            return invalid(format!(
                "totals.documents is {}, the shards sum to {}",
                self.totals.documents,
                sum(|s| s.documents)
            ));
        }
        Ok(())
    }

    /// Re-checks every shard in `root` against the manifest: sizes, SHA-256 of every file, counts, dtype,
    /// and every invariant of the format.
    pub fn verify(&self, root: &Path) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for shard in &self.shards {
            let prefix = root.join(&shard.prefix);
            check_file(&bin_path(&prefix), &shard.bin, &mut report)?;
            check_file(&idx_path(&prefix), &shard.idx, &mut report)?;
            if let Some(cu) = &shard.cu_seqlens {
                let cu_prefix = cu_seqlens_prefix(&prefix);
                check_file(&bin_path(&cu_prefix), &cu.bin, &mut report)?;
                check_file(&idx_path(&cu_prefix), &cu.idx, &mut report)?;
            }
            let dataset = IndexedDataset::open(&prefix)?;
            let mismatch = |what: &str, expected: String, found: String| Error::ManifestMismatch {
                path: idx_path(&prefix),
                what: what.into(),
                expected,
                found,
            };
            if dataset.dtype() != self.dtype {
                return Err(mismatch(
                    "dtype",
                    self.dtype.to_string(),
                    dataset.dtype().to_string(),
                ));
            }
            for (what, expected, found) in [
                ("sequence count", shard.sequences, dataset.num_sequences()),
                ("document count", shard.documents, dataset.num_documents()),
                ("token count", shard.tokens, dataset.num_tokens()),
            ] {
                if expected != found {
                    return Err(mismatch(what, expected.to_string(), found.to_string()));
                }
            }
            match &self.packing {
                None => dataset.validate()?,
                Some(packing) => {
                    let packed = PackedDataset::new(
                        dataset,
                        IndexedDataset::open(cu_seqlens_prefix(&prefix))?,
                    )?;
                    if packed.num_windows() > 0 && packed.seq_len() != packing.seq_len {
                        return Err(mismatch(
                            "seq_len",
                            packing.seq_len.to_string(),
                            packed.seq_len().to_string(),
                        ));
                    }
                    packed.validate()?;
                }
            }
            report.num_shards += 1;
        }
        Ok(report)
    }
}

fn check_file(path: &Path, expected: &FileDigest, report: &mut VerifyReport) -> Result<()> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, "stat", e))?
        .len();
    let mismatch = |what: &str, expected: String, found: String| Error::ManifestMismatch {
        path: path.into(),
        what: what.into(),
        expected,
        found,
    };
    if size != expected.bytes {
        return Err(mismatch(
            "size",
            expected.bytes.to_string(),
            size.to_string(),
        ));
    }
    let (num_bytes, sha256) = sha256_file(path)?;
    if sha256 != expected.sha256 {
        return Err(mismatch("sha256", expected.sha256.clone(), sha256));
    }
    report.num_files += 1;
    report.num_bytes += num_bytes;
    Ok(())
}
