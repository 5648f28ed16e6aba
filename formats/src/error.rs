//! The one error type of flame-formats.
//!
//! Every variant names the file it is about and, where the fault sits at a place in a file, the byte
//! offset, so that a user can open a hex dump at the right spot.

use std::path::PathBuf;

use crate::dtype::TokenDtype;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or verifying token shards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a named file.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done: `open`, `read`, `write`, `rename`, ...
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The `.bin` file of an index does not exist.
    #[error("{path}: data file is missing (the index {idx_path} exists)")]
    MissingBin {
        /// The expected `.bin` path.
        path: PathBuf,
        /// The `.idx` that refers to it.
        idx_path: PathBuf,
    },
    /// The file is shorter than its header.
    #[error("{path}: truncated at byte {found}: the header needs {needed} bytes")]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// Bytes the header needs.
        needed: u64,
        /// Bytes the file has.
        found: u64,
    },
    /// The first bytes are not `MMIDIDX\0\0`.
    #[error("{path}: bad magic at byte 0: expected MMIDIDX\\0\\0, found {found:02x?}")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The bytes found.
        found: Vec<u8>,
    },
    /// The version field is not 1.
    #[error("{path}: unsupported index version {version} at byte 9 (only version 1 exists)")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u64,
    },
    /// The dtype code byte is unknown.
    #[error("{path}: unknown dtype code {code} at byte 17 (known: 1..=10)")]
    UnknownDtype {
        /// The file.
        path: PathBuf,
        /// The code found.
        code: u8,
    },
    /// The counts in the header disagree with the file size.
    #[error(
        "{path}: header counts ({num_sequences} sequences, {num_document_entries} document entries) \
         imply {expected} bytes, the file has {found}"
    )]
    IndexSizeMismatch {
        /// The file.
        path: PathBuf,
        /// Sequence count from the header.
        num_sequences: u64,
        /// Document-index length from the header.
        num_document_entries: u64,
        /// Size the header implies.
        expected: u64,
        /// Size of the file.
        found: u64,
    },
    /// A value inside the index breaks an invariant.
    #[error("{path}: byte {offset}: {reason}")]
    CorruptIndex {
        /// The file.
        path: PathBuf,
        /// Byte offset of the offending field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A sequence's bytes lie outside the data file.
    #[error(
        "{path}: sequence {sequence} spans bytes {start}..{end} but the file has {bin_bytes} \
         (pointer at byte {pointer_offset} of the index)"
    )]
    SequenceOutOfBounds {
        /// The `.bin` file.
        path: PathBuf,
        /// The sequence index.
        sequence: u64,
        /// First byte of the sequence.
        start: u64,
        /// One past the last byte of the sequence.
        end: u64,
        /// Size of the data file.
        bin_bytes: u64,
        /// Offset of the sequence's pointer in the `.idx`.
        pointer_offset: u64,
    },
    /// The data file size does not equal the sum of the sequence lengths.
    #[error("{path}: index expects {expected} token bytes, data file has {found}")]
    BinSizeMismatch {
        /// The `.bin` file.
        path: PathBuf,
        /// Bytes the index accounts for.
        expected: u64,
        /// Bytes in the file.
        found: u64,
    },
    /// A sequence or document number past the end.
    #[error("{path}: {what} {index} out of range (there are {count})")]
    OutOfRange {
        /// The dataset.
        path: PathBuf,
        /// `sequence`, `document` or `window`.
        what: &'static str,
        /// The index asked for.
        index: u64,
        /// How many there are.
        count: u64,
    },
    /// The element type asked for is not the dataset's.
    #[error("{path}: dataset holds {actual}, {requested} was requested")]
    DtypeMismatch {
        /// The dataset.
        path: PathBuf,
        /// Its dtype.
        actual: TokenDtype,
        /// The dtype asked for.
        requested: TokenDtype,
    },
    /// A value does not fit the dataset's dtype.
    #[error("{path}: token {value} does not fit {dtype}")]
    TokenOutOfRange {
        /// The dataset being written.
        path: PathBuf,
        /// The token.
        value: u64,
        /// The dataset's dtype.
        dtype: TokenDtype,
    },
    /// The operation needs a Megatron-core dtype (codes 1..=8).
    #[error(
        "{dtype} (code {code}) is fairseq-only; Megatron cannot read it, so flame does not write it"
    )]
    UnwritableDtype {
        /// The dtype.
        dtype: TokenDtype,
        /// Its code.
        code: u8,
    },
    /// Two datasets to merge disagree on dtype or modes.
    #[error("{path}: cannot merge: {reason}")]
    Incompatible {
        /// The dataset being merged in.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A packed window breaks the packed-format invariants.
    #[error("{path}: window {window}: {reason}")]
    CorruptWindow {
        /// The dataset.
        path: PathBuf,
        /// The window.
        window: u64,
        /// What is wrong.
        reason: String,
    },
    /// A sequence longer than the `.idx` can record.
    #[error("{path}: a sequence of {num_tokens} tokens exceeds the int32 length field")]
    SequenceTooLong {
        /// The dataset.
        path: PathBuf,
        /// Its length.
        num_tokens: u64,
    },
    /// A builder call out of order (documented on each method).
    #[error("{path}: {reason}")]
    Usage {
        /// The dataset.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// `manifest.json` is not valid JSON or does not follow the schema.
    #[error("{path}: line {line}, column {column}: {message}")]
    ManifestSyntax {
        /// The manifest.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde said.
        message: String,
    },
    /// A manifest from a newer flame.
    #[error("{path}: manifest version {found} is newer than this flame understands ({supported})")]
    UnsupportedManifestVersion {
        /// The manifest.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// A file's checksum or size differs from what the manifest records.
    #[error("{path}: {what} is {found}, the manifest records {expected}")]
    ManifestMismatch {
        /// The file (or manifest) at fault.
        path: PathBuf,
        /// `sha256`, `size`, `documents`, ...
        what: String,
        /// Manifest value.
        expected: String,
        /// Value found.
        found: String,
    },
    /// A manifest that parses but breaks the schema's rules.
    #[error("{path}: {reason}")]
    InvalidManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A path that is neither a dataset prefix nor a manifest directory.
    #[error(
        "{path}: not a dataset: expected PREFIX.idx + PREFIX.bin, a directory with manifest.json, or a directory of .idx files"
    )]
    NotADataset {
        /// The path given.
        path: PathBuf,
    },
}

impl Error {
    /// Wraps an [`std::io::Error`] with the file and the operation.
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
