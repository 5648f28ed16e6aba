//! Reading an indexed dataset: memory-mapped, zero-copy, bounds-checked.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::ser::{Serialize, Serializer};

use super::index::{IndexKind, IndexLayout};
use crate::dtype::{Element, TokenDtype};
use crate::error::{Error, Result};
use crate::prefix::{bin_path, idx_path, normalize_prefix};

/// A read-only indexed dataset: an `.idx` and its `.bin`, held as byte buffers.
///
/// `S` is the storage: [`Mmap`] for files ([`IndexedDataset::open`]), or any byte buffer for data held in
/// memory ([`IndexedDataset::from_bytes`]). Random access to a sequence or a document costs a few loads
/// from the index and allocates nothing.
#[derive(Debug)]
pub struct IndexedDataset<S = Mmap> {
    idx: S,
    bin: S,
    layout: IndexLayout,
    prefix: PathBuf,
}

/// The elements of one sequence or document, borrowed from the `.bin`, typed by the dataset's dtype.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)] // one variant per dtype
pub enum TokenSlice<'a> {
    Uint8(&'a [u8]),
    Int8(&'a [i8]),
    Int16(&'a [i16]),
    Int32(&'a [i32]),
    Int64(&'a [i64]),
    Float64(&'a [f64]),
    Float32(&'a [f32]),
    Uint16(&'a [u16]),
    Uint32(&'a [u32]),
    Uint64(&'a [u64]),
}

macro_rules! each_variant {
    ($value:expr, $slice:ident => $body:expr) => {
        match $value {
            TokenSlice::Uint8($slice) => $body,
            TokenSlice::Int8($slice) => $body,
            TokenSlice::Int16($slice) => $body,
            TokenSlice::Int32($slice) => $body,
            TokenSlice::Int64($slice) => $body,
            TokenSlice::Float64($slice) => $body,
            TokenSlice::Float32($slice) => $body,
            TokenSlice::Uint16($slice) => $body,
            TokenSlice::Uint32($slice) => $body,
            TokenSlice::Uint64($slice) => $body,
        }
    };
}

impl<'a> TokenSlice<'a> {
    /// Views `bytes` as elements of `dtype`; `None` when `bytes` is misaligned or not a whole number of elements.
    pub fn from_bytes(dtype: TokenDtype, bytes: &'a [u8]) -> Option<Self> {
        fn cast<T: bytemuck::Pod>(bytes: &[u8]) -> Option<&[T]> {
            bytemuck::try_cast_slice(bytes).ok()
        }
        Some(match dtype {
            TokenDtype::Uint8 => Self::Uint8(bytes),
            TokenDtype::Int8 => Self::Int8(cast(bytes)?),
            TokenDtype::Int16 => Self::Int16(cast(bytes)?),
            TokenDtype::Int32 => Self::Int32(cast(bytes)?),
            TokenDtype::Int64 => Self::Int64(cast(bytes)?),
            TokenDtype::Float64 => Self::Float64(cast(bytes)?),
            TokenDtype::Float32 => Self::Float32(cast(bytes)?),
            TokenDtype::Uint16 => Self::Uint16(cast(bytes)?),
            TokenDtype::Uint32 => Self::Uint32(cast(bytes)?),
            TokenDtype::Uint64 => Self::Uint64(cast(bytes)?),
        })
    }

    /// The dtype.
    pub fn dtype(&self) -> TokenDtype {
        match self {
            Self::Uint8(_) => TokenDtype::Uint8,
            Self::Int8(_) => TokenDtype::Int8,
            Self::Int16(_) => TokenDtype::Int16,
            Self::Int32(_) => TokenDtype::Int32,
            Self::Int64(_) => TokenDtype::Int64,
            Self::Float64(_) => TokenDtype::Float64,
            Self::Float32(_) => TokenDtype::Float32,
            Self::Uint16(_) => TokenDtype::Uint16,
            Self::Uint32(_) => TokenDtype::Uint32,
            Self::Uint64(_) => TokenDtype::Uint64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_variant!(self, s => s.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        each_variant!(*self, s => bytemuck::cast_slice(s))
    }

    /// The elements as `&[T]` when `T` is the dtype's type.
    pub fn as_slice<T: Element>(&self) -> Option<&'a [T]> {
        (T::DTYPE == self.dtype()).then(|| bytemuck::cast_slice(self.as_bytes()))
    }

    /// The elements widened to `i64` (floats truncated toward zero). Allocates: for tests and tools.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match self {
            Self::Uint8(s) => s.iter().map(|&v| i64::from(v)).collect(),
            Self::Int8(s) => s.iter().map(|&v| i64::from(v)).collect(),
            Self::Int16(s) => s.iter().map(|&v| i64::from(v)).collect(),
            Self::Int32(s) => s.iter().map(|&v| i64::from(v)).collect(),
            Self::Int64(s) => s.to_vec(),
            Self::Float64(s) => s.iter().map(|&v| v as i64).collect(),
            Self::Float32(s) => s.iter().map(|&v| v as i64).collect(),
            Self::Uint16(s) => s.iter().map(|&v| i64::from(v)).collect(),
            Self::Uint32(s) => s.iter().map(|&v| i64::from(v)).collect(),
            Self::Uint64(s) => s.iter().map(|&v| v as i64).collect(),
        }
    }
}

impl Serialize for TokenSlice<'_> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        each_variant!(self, s => s.serialize(serializer))
    }
}

/// A byte buffer aligned to 8 bytes, so that any dtype can be viewed in place. For in-memory datasets.
#[derive(Clone, Debug, Default)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    /// Copies `bytes` into an aligned buffer.
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self {
            words,
            len: bytes.len(),
        }
    }
}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

impl IndexedDataset<Mmap> {
    /// Opens `PREFIX.idx` and `PREFIX.bin` (a trailing `.idx` or `.bin` on `prefix` is ignored).
    ///
    /// The files must not be truncated or rewritten while the dataset is open (a memory map would fault).
    pub fn open(prefix: impl AsRef<Path>) -> Result<Self> {
        let prefix = normalize_prefix(prefix.as_ref());
        let idx_path = idx_path(&prefix);
        let bin_path = bin_path(&prefix);
        let idx = map_file(&idx_path)?;
        if !bin_path.exists() {
            return Err(Error::MissingBin {
                path: bin_path,
                idx_path,
            });
        }
        let bin = map_file(&bin_path)?;
        Self::from_parts(idx, bin, prefix)
    }
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    // SAFETY: flame never writes to a file under its final name after the rename that publishes it, and
    // the dataset is documented as read-only for as long as it is open. Every read through the map is
    // bounds-checked against the map's length.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "mmap", e))
}

impl<S: AsRef<[u8]>> IndexedDataset<S> {
    /// A dataset over bytes already in memory; `prefix` names it in errors.
    ///
    /// `bin` must be aligned to the dtype's size for zero-copy views ([`AlignedBytes`] is).
    pub fn from_bytes(idx: S, bin: S, prefix: impl Into<PathBuf>) -> Result<Self> {
        Self::from_parts(idx, bin, prefix.into())
    }

    fn from_parts(idx: S, bin: S, prefix: PathBuf) -> Result<Self> {
        let layout = IndexLayout::parse(idx.as_ref(), &idx_path(&prefix))?;
        let dataset = Self {
            idx,
            bin,
            layout,
            prefix,
        };
        dataset.check_ends()?;
        Ok(dataset)
    }

    /// The O(1) checks of `open`: the document index runs from 0 to `S` and the last sequence lies in `.bin`.
    fn check_ends(&self) -> Result<()> {
        let idx = self.idx.as_ref();
        if self.layout.kind() != IndexKind::Fairseq {
            let entries = self.layout.num_document_entries();
            let first = self.layout.document_entry(idx, 0);
            if first != 0 {
                return Err(self.corrupt(
                    self.layout.documents_offset() as u64,
                    format!("document index starts at {first}, not 0"),
                ));
            }
            let last_at = to_usize(entries - 1);
            let last = self.layout.document_entry(idx, last_at);
            if u64::try_from(last).ok() != Some(self.num_sequences()) {
                return Err(self.corrupt(
                    (self.layout.documents_offset() + 8 * last_at) as u64,
                    format!(
                        "document index ends at {last}, but there are {} sequences",
                        self.num_sequences()
                    ),
                ));
            }
        }
        if let Some(last) = self.num_sequences().checked_sub(1) {
            let (_, end) = self.sequence_bounds(last)?;
            let found = self.bin.as_ref().len() as u64;
            if end > found {
                return Err(Error::BinSizeMismatch {
                    path: self.bin_path(),
                    expected: end,
                    found,
                });
            }
        }
        Ok(())
    }

    /// The prefix the dataset was opened with.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Path of the `.idx`.
    pub fn idx_path(&self) -> PathBuf {
        idx_path(&self.prefix)
    }

    /// Path of the `.bin`.
    pub fn bin_path(&self) -> PathBuf {
        bin_path(&self.prefix)
    }

    /// The parsed header.
    pub fn layout(&self) -> &IndexLayout {
        &self.layout
    }

    /// The variant of the index.
    pub fn kind(&self) -> IndexKind {
        self.layout.kind()
    }

    /// The element type.
    pub fn dtype(&self) -> TokenDtype {
        self.layout.dtype()
    }

    /// Number of sequences.
    pub fn num_sequences(&self) -> u64 {
        self.layout.num_sequences()
    }

    /// Number of documents.
    pub fn num_documents(&self) -> u64 {
        self.layout.num_documents()
    }

    /// Total elements, from the end of the last sequence (O(1)).
    pub fn num_tokens(&self) -> u64 {
        self.num_sequences()
            .checked_sub(1)
            .and_then(|last| self.sequence_span(last).ok())
            .map_or(0, |span| (span.end / self.dtype().size_bytes()) as u64)
    }

    /// The raw `.idx` bytes.
    pub fn idx_bytes(&self) -> &[u8] {
        self.idx.as_ref()
    }

    /// The raw `.bin` bytes.
    pub fn bin_bytes(&self) -> &[u8] {
        self.bin.as_ref()
    }

    /// Length of sequence `i` in elements.
    pub fn sequence_len(&self, i: u64) -> Result<u32> {
        let at = self.check_sequence(i)?;
        let len = self.layout.length(self.idx.as_ref(), at);
        u32::try_from(len).map_err(|_| {
            self.corrupt(
                (self.layout.lengths_offset() + 4 * at) as u64,
                format!("negative length {len} of sequence {i}"),
            )
        })
    }

    /// The sequence lengths, in order, as stored (unchecked: [`IndexedDataset::validate`] checks them).
    pub fn sequence_lengths(&self) -> impl ExactSizeIterator<Item = i32> + '_ {
        let idx = self.idx.as_ref();
        (0..to_usize(self.num_sequences())).map(move |i| self.layout.length(idx, i))
    }

    /// The sequence pointers, in order, as stored.
    pub fn sequence_pointers(&self) -> impl ExactSizeIterator<Item = i64> + '_ {
        let idx = self.idx.as_ref();
        (0..to_usize(self.num_sequences())).map(move |i| self.layout.pointer(idx, i))
    }

    /// The document index as stored; for fairseq, the implied `0..=S`.
    pub fn document_indices(&self) -> Box<dyn Iterator<Item = i64> + '_> {
        let idx = self.idx.as_ref();
        match self.kind() {
            IndexKind::Fairseq => Box::new(
                (0..=self.num_sequences())
                    .map(|i| i64::try_from(i).expect("bounded by the index size")),
            ),
            IndexKind::Megatron | IndexKind::Multimodal => Box::new(
                (0..to_usize(self.layout.num_document_entries()))
                    .map(move |j| self.layout.document_entry(idx, j)),
            ),
        }
    }

    /// Mode of sequence `i`: `Some` only for multimodal datasets.
    pub fn sequence_mode(&self, i: u64) -> Result<Option<i8>> {
        let at = self.check_sequence(i)?;
        Ok((self.kind() == IndexKind::Multimodal).then(|| self.layout.mode(self.idx.as_ref(), at)))
    }

    /// The elements of sequence `i`, zero-copy.
    pub fn sequence(&self, i: u64) -> Result<TokenSlice<'_>> {
        let span = self.sequence_span(i)?;
        self.view(span)
    }

    /// The elements of sequence `i` as `&[T]`; `T` must be the dataset's element type.
    pub fn sequence_as<T: Element>(&self, i: u64) -> Result<&[T]> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DtypeMismatch {
                path: self.prefix.clone(),
                actual: self.dtype(),
                requested: T::DTYPE,
            });
        }
        let span = self.sequence_span(i)?;
        let start = span.start;
        bytemuck::try_cast_slice(&self.bin.as_ref()[span]).map_err(|_| Error::Usage {
            path: self.bin_path(),
            reason: format!(
                "bytes at {start} are not aligned for {}; keep in-memory data in AlignedBytes",
                self.dtype()
            ),
        })
    }

    /// The sequences of document `d`.
    pub fn document_sequences(&self, d: u64) -> Result<Range<u64>> {
        if d >= self.num_documents() {
            return Err(Error::OutOfRange {
                path: self.prefix.clone(),
                what: "document",
                index: d,
                count: self.num_documents(),
            });
        }
        if self.kind() == IndexKind::Fairseq {
            return Ok(d..d + 1);
        }
        let idx = self.idx.as_ref();
        let at = to_usize(d);
        let (start, end) = (
            self.layout.document_entry(idx, at),
            self.layout.document_entry(idx, at + 1),
        );
        let in_range = |v: i64| u64::try_from(v).ok().filter(|&v| v <= self.num_sequences());
        match (in_range(start), in_range(end)) {
            (Some(start), Some(end)) if start <= end => Ok(start..end),
            _ => Err(self.corrupt(
                (self.layout.documents_offset() + 8 * at) as u64,
                format!(
                    "document {d} spans sequences {start}..{end}, outside 0..={}",
                    self.num_sequences()
                ),
            )),
        }
    }

    /// All elements of document `d`, zero-copy (its sequences are contiguous in `.bin`).
    pub fn document(&self, d: u64) -> Result<TokenSlice<'_>> {
        let sequences = self.document_sequences(d)?;
        if sequences.is_empty() {
            return self.view(0..0);
        }
        let first = self.sequence_span(sequences.start)?;
        let last = self.sequence_span(sequences.end - 1)?;
        if last.end < first.start {
            return Err(self.corrupt(
                self.pointer_offset(sequences.end - 1),
                format!("sequences of document {d} are not contiguous"),
            ));
        }
        self.view(first.start..last.end)
    }

    /// Checks every invariant of the format in one pass over the index: O(S + D), no allocation.
    pub fn validate(&self) -> Result<()> {
        let idx = self.idx.as_ref();
        let item = self.dtype().size_bytes() as u64;
        let mut expected_pointer = 0u64;
        for i in 0..to_usize(self.num_sequences()) {
            let len = self.layout.length(idx, i);
            let len = u64::try_from(len).map_err(|_| {
                self.corrupt(
                    (self.layout.lengths_offset() + 4 * i) as u64,
                    format!("negative length {len} of sequence {i}"),
                )
            })?;
            let pointer = self.layout.pointer(idx, i);
            if u64::try_from(pointer).ok() != Some(expected_pointer) {
                return Err(self.corrupt(
                    self.pointer_offset(i as u64),
                    format!("sequence {i} points at byte {pointer}, but the sequences before it end at byte {expected_pointer}"),
                ));
            }
            expected_pointer += len * item;
        }
        let found = self.bin.as_ref().len() as u64;
        if found != expected_pointer {
            return Err(Error::BinSizeMismatch {
                path: self.bin_path(),
                expected: expected_pointer,
                found,
            });
        }
        if self.kind() != IndexKind::Fairseq {
            let mut previous = 0i64;
            for j in 0..to_usize(self.layout.num_document_entries()) {
                let entry = self.layout.document_entry(idx, j);
                if entry < previous
                    || u64::try_from(entry).map_or(true, |e| e > self.num_sequences())
                {
                    return Err(self.corrupt(
                        (self.layout.documents_offset() + 8 * j) as u64,
                        format!("document index entry {j} is {entry}, after {previous} (must be non-decreasing, at most {})", self.num_sequences()),
                    ));
                }
                previous = entry;
            }
        }
        Ok(())
    }

    fn check_sequence(&self, i: u64) -> Result<usize> {
        if i >= self.num_sequences() {
            return Err(Error::OutOfRange {
                path: self.prefix.clone(),
                what: "sequence",
                index: i,
                count: self.num_sequences(),
            });
        }
        Ok(to_usize(i))
    }

    fn pointer_offset(&self, i: u64) -> u64 {
        (self.layout.pointers_offset() + 8 * to_usize(i)) as u64
    }

    /// Byte bounds of sequence `i` as the index states them (non-negative, aligned, not overflowing).
    fn sequence_bounds(&self, i: u64) -> Result<(u64, u64)> {
        let len = u64::from(self.sequence_len(i)?);
        let pointer = self.layout.pointer(self.idx.as_ref(), to_usize(i));
        let item = self.dtype().size_bytes() as u64;
        let start = u64::try_from(pointer).map_err(|_| {
            self.corrupt(
                self.pointer_offset(i),
                format!("negative pointer {pointer} of sequence {i}"),
            )
        })?;
        if start & (item - 1) != 0 {
            return Err(self.corrupt(
                self.pointer_offset(i),
                format!(
                    "pointer {start} of sequence {i} is not a multiple of the {item}-byte element"
                ),
            ));
        }
        let end = start.checked_add(len * item).ok_or_else(|| {
            self.corrupt(
                self.pointer_offset(i),
                format!("sequence {i} ends past 2^64 bytes"),
            )
        })?;
        Ok((start, end))
    }

    /// Byte range of sequence `i` in `.bin`, checked against the file.
    fn sequence_span(&self, i: u64) -> Result<Range<usize>> {
        let (start, end) = self.sequence_bounds(i)?;
        let bin_bytes = self.bin.as_ref().len() as u64;
        if end > bin_bytes {
            return Err(Error::SequenceOutOfBounds {
                path: self.bin_path(),
                sequence: i,
                start,
                end,
                bin_bytes,
                pointer_offset: self.pointer_offset(i),
            });
        }
        Ok(to_usize(start)..to_usize(end))
    }

    fn view(&self, span: Range<usize>) -> Result<TokenSlice<'_>> {
        let start = span.start;
        TokenSlice::from_bytes(self.dtype(), &self.bin.as_ref()[span]).ok_or_else(|| Error::Usage {
            path: self.bin_path(),
            reason: format!(
                "bytes at {start} are not aligned for {}; keep in-memory data in AlignedBytes",
                self.dtype()
            ),
        })
    }

    fn corrupt(&self, offset: u64, reason: String) -> Error {
        Error::CorruptIndex {
            path: self.idx_path(),
            offset,
            reason,
        }
    }
}

/// Converts a count already checked against a buffer length.
fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("bounded by a buffer length")
}
