//! Writing an indexed dataset: streaming, bounded memory, published atomically.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::{IndexKind, IndexLayout};
use super::reader::IndexedDataset;
use crate::dtype::{Element, TokenDtype};
use crate::durable::{HashingFile, publish, temp_path};
use crate::error::{Error, Result};
use crate::prefix::{bin_path, idx_path, normalize_prefix};

/// Size and checksum of a written file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, lower-case hex.
    pub sha256: String,
}

/// What [`IndexedDatasetBuilder::finalize`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetSummary {
    /// The prefix.
    pub prefix: PathBuf,
    /// Element type.
    pub dtype: TokenDtype,
    /// Sequences written.
    pub num_sequences: u64,
    /// Documents written.
    pub num_documents: u64,
    /// Elements written.
    pub num_tokens: u64,
    /// The `.bin`.
    pub bin: FileDigest,
    /// The `.idx`.
    pub idx: FileDigest,
}

/// Writes `PREFIX.bin` and `PREFIX.idx` the way megatron-core's `IndexedDatasetBuilder` does, in bounded memory.
///
/// Tokens stream to `PREFIX.bin.tmp`; lengths, document boundaries and modes stream to anonymous temporary
/// files, so memory does not grow with the dataset (Megatron keeps them in Python lists). [`finalize`]
/// writes `PREFIX.idx.tmp`, fsyncs both and renames them into place, `.bin` first: an `.idx` under its final
/// name always describes a complete `.bin`. Dropping the builder without finalizing removes the temporary files.
///
/// As in Megatron, [`add_item`] writes one sequence and [`end_document`] closes the document made of the
/// sequences added since the last close (possibly none).
///
/// [`finalize`]: IndexedDatasetBuilder::finalize
/// [`add_item`]: IndexedDatasetBuilder::add_item
/// [`end_document`]: IndexedDatasetBuilder::end_document
#[derive(Debug)]
pub struct IndexedDatasetBuilder {
    prefix: PathBuf,
    dtype: TokenDtype,
    is_multimodal: bool,
    bin: Option<HashingFile>,
    lengths: BufWriter<File>,
    documents: BufWriter<File>,
    modes: Option<BufWriter<File>>,
    num_sequences: u64,
    num_document_entries: u64,
    num_tokens: u64,
    last_entry: u64,
    scratch: Vec<u8>,
}

impl IndexedDatasetBuilder {
    /// Starts a dataset at `prefix`, whose directory must exist.
    pub fn create(prefix: impl AsRef<Path>, dtype: TokenDtype) -> Result<Self> {
        Self::create_with_modes(prefix, dtype, false)
    }

    /// Starts a dataset that records a mode per sequence (Megatron's multimodal variant) when `is_multimodal`.
    pub fn create_with_modes(
        prefix: impl AsRef<Path>,
        dtype: TokenDtype,
        is_multimodal: bool,
    ) -> Result<Self> {
        if !dtype.is_megatron() {
            return Err(Error::UnwritableDtype {
                dtype,
                code: dtype.code(),
            });
        }
        let prefix = normalize_prefix(prefix.as_ref());
        let dir = match prefix.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let side_file = || -> Result<BufWriter<File>> {
            let file = tempfile::tempfile_in(&dir)
                .map_err(|e| Error::io(&dir, "create temporary file", e))?;
            Ok(BufWriter::with_capacity(1 << 16, file))
        };
        let bin = HashingFile::create(temp_path(&bin_path(&prefix)))?;
        let mut builder = Self {
            lengths: side_file()?,
            documents: side_file()?,
            modes: if is_multimodal {
                Some(side_file()?)
            } else {
                None
            },
            bin: Some(bin),
            prefix,
            dtype,
            is_multimodal,
            num_sequences: 0,
            num_document_entries: 0,
            num_tokens: 0,
            last_entry: 0,
            scratch: Vec::new(),
        };
        builder.push_document_entry(0)?;
        Ok(builder)
    }

    /// The prefix being written.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The element type.
    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// Sequences added so far.
    pub fn num_sequences(&self) -> u64 {
        self.num_sequences
    }

    /// Documents closed so far.
    pub fn num_documents(&self) -> u64 {
        self.num_document_entries - 1
    }

    /// Elements added so far.
    pub fn num_tokens(&self) -> u64 {
        self.num_tokens
    }

    /// Adds one sequence of token ids, converted to the dataset's dtype.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] when an id does not fit the dtype; nothing is written then.
    pub fn add_item(&mut self, tokens: &[u32]) -> Result<()> {
        self.write_tokens(tokens)?;
        self.push_sequence(tokens.len() as u64, 0)
    }

    /// Adds one sequence with its mode; the builder must have been created multimodal.
    pub fn add_item_with_mode(&mut self, tokens: &[u32], mode: i8) -> Result<()> {
        if !self.is_multimodal {
            return Err(self.usage("add_item_with_mode on a dataset created without modes"));
        }
        self.write_tokens(tokens)?;
        self.push_sequence(tokens.len() as u64, mode)
    }

    /// Adds one sequence whose elements already have the dataset's type (any dtype, floats included).
    pub fn add_raw_item<T: Element>(&mut self, items: &[T]) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::DtypeMismatch {
                path: self.prefix.clone(),
                actual: self.dtype,
                requested: T::DTYPE,
            });
        }
        Self::check_length(&self.prefix, items.len() as u64)?;
        self.bin_mut().write_all(bytemuck::cast_slice(items))?;
        self.push_sequence(items.len() as u64, 0)
    }

    /// Closes the current document. Like Megatron, a document may hold zero sequences.
    pub fn end_document(&mut self) -> Result<()> {
        self.push_document_entry(self.num_sequences)
    }

    /// Megatron's `add_document`: `tokens` split into sequences of `lengths`, then one document boundary.
    pub fn add_document(&mut self, tokens: &[u32], lengths: &[u32]) -> Result<()> {
        let total: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
        if total != tokens.len() as u64 {
            return Err(self.usage(&format!(
                "add_document: lengths sum to {total}, but {} tokens were given",
                tokens.len()
            )));
        }
        let mut rest = tokens;
        for &len in lengths {
            let (head, tail) = rest.split_at(len as usize);
            self.add_item(head)?;
            rest = tail;
        }
        self.end_document()
    }

    /// Appends every sequence and document of `other`, as Megatron's `add_index` does (the merge step).
    ///
    /// `other` must have the same dtype and the same multimodal-ness, and must pass
    /// [`IndexedDataset::validate`]: its `.bin` is copied as is and pointers are rebuilt from lengths.
    pub fn append<S: AsRef<[u8]>>(&mut self, other: &IndexedDataset<S>) -> Result<()> {
        if self.has_open_document() {
            return Err(self.usage("append: close the current document with end_document() first"));
        }
        if other.dtype() != self.dtype {
            return Err(Error::Incompatible {
                path: other.prefix().to_path_buf(),
                reason: format!(
                    "it holds {}, the output holds {}",
                    other.dtype(),
                    self.dtype
                ),
            });
        }
        // With no sequences the modes array is empty, so a multimodal file looks like a plain one: either fits.
        if (other.kind() == IndexKind::Multimodal) != self.is_multimodal
            && other.num_sequences() > 0
        {
            return Err(Error::Incompatible {
                path: other.prefix().to_path_buf(),
                reason: "one dataset has sequence modes and the other has not".into(),
            });
        }
        other.validate()?;
        let layout = *other.layout();
        let idx = other.idx_bytes();
        let num_sequences =
            usize::try_from(other.num_sequences()).expect("bounded by the index size");
        self.bin_mut().write_all(other.bin_bytes())?;
        let lengths = &idx[layout.lengths_offset()..layout.lengths_offset() + 4 * num_sequences];
        self.lengths
            .write_all(lengths)
            .map_err(|e| Error::io(&self.prefix, "write temporary file", e))?;
        if let Some(modes) = self.modes.as_mut() {
            let start = layout.modes_offset();
            modes
                .write_all(&idx[start..start + num_sequences])
                .map_err(|e| Error::io(&self.prefix, "write temporary file", e))?;
        }
        let offset = self.num_sequences;
        for entry in other.document_indices().skip(1) {
            let entry = u64::try_from(entry).expect("validated: non-negative");
            self.push_document_entry(offset + entry)?;
        }
        self.num_sequences += other.num_sequences();
        self.num_tokens += other.num_tokens();
        Ok(())
    }

    /// Writes the `.idx`, then publishes `.bin` and `.idx` under their final names.
    ///
    /// # Errors
    /// [`Error::Usage`] when sequences were added after the last [`end_document`](Self::end_document): Megatron's
    /// reader would refuse such a file.
    pub fn finalize(mut self) -> Result<DatasetSummary> {
        if self.has_open_document() {
            return Err(self.usage(&format!(
                "{} sequences were added after the last end_document(); Megatron cannot read such an index",
                self.num_sequences - self.last_document_entry()
            )));
        }
        let (bin_temp, bin_bytes, bin_sha256) =
            self.bin.take().expect("present until finalize").finish()?;
        let idx_final = idx_path(&self.prefix);
        let mut idx = HashingFile::create(temp_path(&idx_final))?;
        idx.write_all(&IndexLayout::encode_header(
            self.dtype,
            self.num_sequences,
            self.num_document_entries,
        ))?;
        let lengths = rewind(&mut self.lengths, &self.prefix)?;
        copy_into(
            lengths
                .try_clone()
                .map_err(|e| Error::io(&self.prefix, "reopen temporary file", e))?,
            &mut idx,
        )?;
        write_pointers(
            rewound(lengths, &self.prefix)?,
            self.dtype,
            &mut idx,
            &self.prefix,
        )?;
        copy_into(rewind(&mut self.documents, &self.prefix)?, &mut idx)?;
        if let Some(modes) = self.modes.as_mut() {
            copy_into(rewind(modes, &self.prefix)?, &mut idx)?;
        }
        let (idx_temp, idx_bytes, idx_sha256) = idx.finish()?;
        publish(&bin_temp, &bin_path(&self.prefix))?;
        publish(&idx_temp, &idx_final)?;
        Ok(DatasetSummary {
            prefix: self.prefix.clone(),
            dtype: self.dtype,
            num_sequences: self.num_sequences,
            num_documents: self.num_document_entries - 1,
            num_tokens: self.num_tokens,
            bin: FileDigest {
                bytes: bin_bytes,
                sha256: bin_sha256,
            },
            idx: FileDigest {
                bytes: idx_bytes,
                sha256: idx_sha256,
            },
        })
    }

    fn has_open_document(&self) -> bool {
        self.last_document_entry() != self.num_sequences
    }

    fn last_document_entry(&self) -> u64 {
        self.last_entry
    }

    fn usage(&self, reason: &str) -> Error {
        Error::Usage {
            path: self.prefix.clone(),
            reason: reason.to_owned(),
        }
    }

    fn bin_mut(&mut self) -> &mut HashingFile {
        self.bin.as_mut().expect("present until finalize")
    }

    fn push_document_entry(&mut self, entry: u64) -> Result<()> {
        self.documents
            .write_all(
                &i64::try_from(entry)
                    .expect("sequence counts fit i64")
                    .to_le_bytes(),
            )
            .map_err(|e| Error::io(&self.prefix, "write temporary file", e))?;
        self.num_document_entries += 1;
        self.last_entry = entry;
        Ok(())
    }

    fn check_length(prefix: &Path, num_tokens: u64) -> Result<i32> {
        i32::try_from(num_tokens).map_err(|_| Error::SequenceTooLong {
            path: prefix.to_path_buf(),
            num_tokens,
        })
    }

    /// Records a sequence of `num_tokens` whose tokens are already in the `.bin`.
    fn push_sequence(&mut self, num_tokens: u64, mode: i8) -> Result<()> {
        let len = Self::check_length(&self.prefix, num_tokens)?;
        self.lengths
            .write_all(&len.to_le_bytes())
            .map_err(|e| Error::io(&self.prefix, "write temporary file", e))?;
        if let Some(modes) = self.modes.as_mut() {
            modes
                .write_all(&mode.to_le_bytes())
                .map_err(|e| Error::io(&self.prefix, "write temporary file", e))?;
        }
        self.num_sequences += 1;
        self.num_tokens += num_tokens;
        Ok(())
    }

    /// Checks the range and length of `tokens`, then writes them to the `.bin` as little-endian values of
    /// the dtype, a bounded slice at a time (a 200 MB document does not get a second copy).
    fn write_tokens(&mut self, tokens: &[u32]) -> Result<()> {
        Self::check_length(&self.prefix, tokens.len() as u64)?;
        let max = tokens.iter().copied().max().unwrap_or(0);
        if u64::from(max) > self.dtype.max_token_id() {
            return Err(Error::TokenOutOfRange {
                path: self.prefix.clone(),
                value: u64::from(max),
                dtype: self.dtype,
            });
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut written = Ok(());
        for slice in tokens.chunks(SCRATCH_TOKENS) {
            encode_into(self.dtype, slice, &mut scratch);
            written = self.bin_mut().write_all(&scratch);
            if written.is_err() {
                break;
            }
        }
        self.scratch = scratch;
        written
    }
}

/// Tokens converted per write.
const SCRATCH_TOKENS: usize = 1 << 16;

/// Converts `tokens` (already range-checked) into little-endian bytes of `dtype` in `out`.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_possible_wrap
)]
fn encode_into(dtype: TokenDtype, tokens: &[u32], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(tokens.len() * dtype.size_bytes());
    match dtype {
        TokenDtype::Uint16 => out.extend(tokens.iter().flat_map(|&t| (t as u16).to_le_bytes())),
        TokenDtype::Int32 => out.extend(tokens.iter().flat_map(|&t| (t as i32).to_le_bytes())),
        TokenDtype::Uint8 => out.extend(tokens.iter().map(|&t| t as u8)),
        TokenDtype::Int8 => out.extend(tokens.iter().flat_map(|&t| (t as i8).to_le_bytes())),
        TokenDtype::Int16 => out.extend(tokens.iter().flat_map(|&t| (t as i16).to_le_bytes())),
        TokenDtype::Int64 => {
            out.extend(tokens.iter().flat_map(|&t| i64::from(t).to_le_bytes()));
        }
        TokenDtype::Float64 => {
            out.extend(tokens.iter().flat_map(|&t| f64::from(t).to_le_bytes()));
        }
        TokenDtype::Float32 => {
            out.extend(tokens.iter().flat_map(|&t| (t as f32).to_le_bytes()));
        }
        TokenDtype::Uint32 | TokenDtype::Uint64 => {
            unreachable!("rejected in create_with_modes")
        }
    }
}

impl Drop for IndexedDatasetBuilder {
    fn drop(&mut self) {
        if self.bin.take().is_some() {
            // Not finalized: leave nothing behind. Errors are moot; the temporary name is never read.
            let _ = std::fs::remove_file(temp_path(&bin_path(&self.prefix)));
            let _ = std::fs::remove_file(temp_path(&idx_path(&self.prefix)));
        }
    }
}

/// Flushes a side file and returns it positioned at its start.
fn rewind(writer: &mut BufWriter<File>, prefix: &Path) -> Result<File> {
    writer
        .flush()
        .map_err(|e| Error::io(prefix, "write temporary file", e))?;
    let mut file = writer
        .get_ref()
        .try_clone()
        .map_err(|e| Error::io(prefix, "reopen temporary file", e))?;
    file.rewind()
        .map_err(|e| Error::io(prefix, "seek temporary file", e))?;
    Ok(file)
}

fn rewound(mut file: File, prefix: &Path) -> Result<File> {
    file.rewind()
        .map_err(|e| Error::io(prefix, "seek temporary file", e))?;
    Ok(file)
}

fn copy_into(file: File, out: &mut HashingFile) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| Error::io("<temporary file>", "read", e))?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buffer[..n])?;
    }
}

/// Streams `pointer[i] = Σ_{j<i} len[j]·itemsize` from the lengths side file.
fn write_pointers(
    lengths: File,
    dtype: TokenDtype,
    out: &mut HashingFile,
    prefix: &Path,
) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, lengths);
    let item = dtype.size_bytes() as u64;
    let mut pointer = 0u64;
    let mut len_bytes = [0u8; 4];
    let mut batch = Vec::with_capacity(1 << 16);
    loop {
        match reader.read_exact(&mut len_bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::io(prefix, "read temporary file", e)),
        }
        let p = i64::try_from(pointer).map_err(|_| Error::Usage {
            path: prefix.into(),
            reason: "data file exceeds i64 bytes".into(),
        })?;
        batch.extend_from_slice(&p.to_le_bytes());
        pointer += u64::try_from(i32::from_le_bytes(len_bytes))
            .expect("lengths are written non-negative")
            * item;
        if batch.len() >= 1 << 16 {
            out.write_all(&batch)?;
            batch.clear();
        }
    }
    out.write_all(&batch)
}

/// Merges datasets in the order given into `output` (Megatron's `merge_datasets.py`, streaming).
///
/// Sort names with [`natural_cmp`](crate::prefix::natural_cmp) first if they come from a directory listing.
pub fn merge(output: impl AsRef<Path>, inputs: &[impl AsRef<Path>]) -> Result<DatasetSummary> {
    let first = inputs.first().ok_or_else(|| Error::Usage {
        path: output.as_ref().into(),
        reason: "merge needs at least one input".into(),
    })?;
    let dtype = IndexedDataset::open(first)?.dtype();
    // An input without sequences cannot show whether it has modes, so ask all of them (headers only).
    let mut is_multimodal = false;
    for input in inputs {
        is_multimodal |= IndexedDataset::open(input)?.kind() == IndexKind::Multimodal;
    }
    let mut builder = IndexedDatasetBuilder::create_with_modes(output, dtype, is_multimodal)?;
    for input in inputs {
        builder.append(&IndexedDataset::open(input)?)?;
    }
    builder.finalize()
}
