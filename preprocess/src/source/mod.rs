//! Where documents come from: local files of several formats, read in a fixed order.
//!
//! Every reader yields [`Document`]s in file order, each tagged with where it came from so that a bad
//! record can be named precisely. Readers own their file handles and read in bounded batches; nothing
//! here tokenizes.

mod arrow;
mod columnar;
pub mod hub;
mod jsonl;
mod parquet;
pub mod remote;
mod resolve;
mod text;

use std::fmt;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use resolve::{InputFile, RemoteFile, resolve_inputs};

/// A document's text and where it was found.
#[derive(Debug)]
pub struct Document {
    /// The text; may be empty.
    pub text: Text,
    /// Where it came from.
    pub origin: Origin,
}

/// A document's text: owned, or read in place from a column of Arrow strings (parquet, Arrow IPC), whose
/// buffers it keeps alive, so that no text is copied between the file and the encoder.
#[derive(Clone, Debug)]
pub struct Text(TextKind);

#[derive(Clone, Debug)]
enum TextKind {
    Owned(String),
    Column {
        column: arrow_array::ArrayRef,
        row: usize,
    },
}

impl Text {
    /// The string at `row` of `column` (a `Utf8`, `LargeUtf8` or `Utf8View` array, not null there).
    pub fn in_column(column: arrow_array::ArrayRef, row: usize) -> Self {
        Self(TextKind::Column { column, row })
    }
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        use arrow_array::cast::AsArray;
        match &self.0 {
            TextKind::Owned(text) => text,
            TextKind::Column { column, row } => match column.data_type() {
                arrow_schema::DataType::Utf8 => column.as_string::<i32>().value(*row),
                arrow_schema::DataType::LargeUtf8 => column.as_string::<i64>().value(*row),
                _ => column.as_string_view().value(*row),
            },
        }
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(TextKind::Owned(text))
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        match text.0 {
            TextKind::Owned(text) => text,
            TextKind::Column { .. } => (*text).to_owned(),
        }
    }
}

/// A position in an input: the file and the 1-based line (jsonl, text) or 0-based row (parquet, arrow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Index of the file in the resolved input list.
    pub file_index: usize,
    /// Line or row number.
    pub position: u64,
}

/// The formats flame-prep reads, from the file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// Apache Parquet.
    Parquet,
    /// JSON lines, optionally `.gz` or `.zst` compressed.
    Jsonl,
    /// Arrow IPC, file or stream format (the `datasets` cache and `save_to_disk`).
    Arrow,
    /// Plain text: one document per file.
    Text,
}

impl SourceFormat {
    /// The format of `path` by its extension, if flame reads it.
    pub fn of(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name
            .strip_suffix(".gz")
            .or_else(|| name.strip_suffix(".zst"))
            .unwrap_or(&name);
        let is_compressed = name.len() != path.file_name()?.len();
        Some(match name.rsplit('.').next()? {
            "parquet" if !is_compressed => Self::Parquet,
            "jsonl" | "json" | "ndjson" => Self::Jsonl,
            "arrow" if !is_compressed => Self::Arrow,
            "txt" | "text" | "md" => Self::Text,
            _ => return None,
        })
    }

    /// Refuses an input of 0 bytes where that cannot be data: a parquet, Arrow or JSON-lines file of 0
    /// bytes holds no record and is most likely a failed download or copy. A plain-text file is one
    /// document, so an empty one is an empty document.
    pub fn check_size(self, path: &Path, num_bytes: u64) -> anyhow::Result<()> {
        anyhow::ensure!(
            num_bytes > 0 || self == Self::Text,
            "{}: file is empty (0 bytes)",
            path.display()
        );
        Ok(())
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Jsonl => "jsonl",
            Self::Arrow => "arrow",
            Self::Text => "text",
        }
    }
}

/// A bad record: what is wrong and where.
#[derive(Debug)]
pub struct BadRecord {
    /// The file.
    pub path: PathBuf,
    /// `line 12`, `row 3`, ...
    pub position: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.path.display(),
            self.position,
            self.reason
        )
    }
}

impl std::error::Error for BadRecord {}

/// What a reader returns per record: a document, or a bad record the caller may skip or fail on.
pub type Record = Result<Document, BadRecord>;

/// Reads documents from one input file in order.
pub trait DocumentReader: Send {
    /// Appends up to `max_records` records (or fewer, stopping once `max_bytes` of text is reached) to
    /// `out`; returns `Ok(false)` when the file is exhausted. A whole-file failure (cannot open, not a
    /// parquet file, no text column) is an `Err`.
    fn read_batch(
        &mut self,
        out: &mut Vec<Record>,
        max_records: usize,
        max_bytes: usize,
    ) -> anyhow::Result<bool>;

    /// Bytes of the file consumed so far, exact or estimated; for progress and its ETA only.
    fn bytes_read(&self) -> u64;
}

/// A reader that counts the bytes read through it, for [`DocumentReader::bytes_read`].
pub(crate) struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> Counted<R> {
    /// Wraps `inner`; the returned counter follows the bytes read.
    pub(crate) fn new(inner: R) -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            Self {
                inner,
                count: Arc::clone(&count),
            },
            count,
        )
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: Seek> Seek for Counted<R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Opens a reader for `input`. `text_key` is the column or JSON key; `None` means `text`, else `content`.
pub fn open_reader(
    input: &InputFile,
    file_index: usize,
    text_key: Option<&str>,
) -> anyhow::Result<Box<dyn DocumentReader>> {
    Ok(match input.format {
        SourceFormat::Parquet => Box::new(parquet::ParquetReader::open(
            &input.path,
            file_index,
            text_key,
        )?),
        SourceFormat::Jsonl => {
            Box::new(jsonl::JsonlReader::open(&input.path, file_index, text_key)?)
        }
        SourceFormat::Arrow => {
            Box::new(arrow::ArrowReader::open(&input.path, file_index, text_key)?)
        }
        SourceFormat::Text => Box::new(text::TextReader::open(&input.path, file_index)),
    })
}

/// Picks the text column among `names`: `text_key` if given, else `text`, else `content`.
pub(crate) fn pick_text_column<'a>(
    names: impl Iterator<Item = &'a str> + Clone,
    text_key: Option<&str>,
    path: &Path,
) -> anyhow::Result<String> {
    let given;
    let candidates: &[&str] = match text_key {
        Some(key) => {
            given = [key];
            &given
        }
        None => &["text", "content"],
    };
    for candidate in candidates {
        if names.clone().any(|n| n == *candidate) {
            return Ok((*candidate).to_owned());
        }
    }
    let found: Vec<&str> = names.collect();
    anyhow::bail!(
        "{}: no text column: looked for {} among the columns {:?} (choose one with --text-key)",
        path.display(),
        candidates
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(" or "),
        found
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_read_in_place_from_every_kind_of_string_column() {
        use arrow_array::{ArrayRef, LargeStringArray, StringArray, StringViewArray};
        let columns: [ArrayRef; 3] = [
            Arc::new(StringArray::from(vec!["a", "Grüße"])),
            Arc::new(LargeStringArray::from(vec!["a", "Grüße"])),
            Arc::new(StringViewArray::from(vec![
                "a",
                "a string longer than twelve bytes",
            ])),
        ];
        for column in columns {
            let text = Text::in_column(Arc::clone(&column), 1);
            assert!(text.len() > 5);
            assert_eq!(String::from(text.clone()), &*text);
        }
        assert_eq!(&*Text::from("owned".to_owned()), "owned");
    }

    use super::*;

    #[test]
    fn formats_come_from_extensions() {
        for (name, format) in [
            (
                "a/train-00000-of-00002.parquet",
                Some(SourceFormat::Parquet),
            ),
            ("x.jsonl", Some(SourceFormat::Jsonl)),
            ("x.json.gz", Some(SourceFormat::Jsonl)),
            ("x.jsonl.zst", Some(SourceFormat::Jsonl)),
            ("data-00000-of-00001.arrow", Some(SourceFormat::Arrow)),
            ("book.txt", Some(SourceFormat::Text)),
            ("x.parquet.gz", None),
            ("x.csv", None),
            ("README", None),
        ] {
            assert_eq!(SourceFormat::of(Path::new(name)), format, "{name}");
        }
    }
}
