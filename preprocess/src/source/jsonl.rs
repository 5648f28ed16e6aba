//! JSON lines, plain or `.gz` / `.zst` compressed: one object per line, the text under a key.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use serde_json::value::RawValue;

use super::{BadRecord, Counted, Document, DocumentReader, Origin, Record};

/// A line buffer larger than this is freed after use rather than kept for the next line.
const LINE_BUFFER_KEPT: usize = 4 << 20;

pub struct JsonlReader {
    path: PathBuf,
    file_index: usize,
    text_key: Option<String>,
    lines: Box<dyn BufRead + Send>,
    line: Vec<u8>,
    line_number: u64,
    bytes_read: Arc<AtomicU64>,
}

impl JsonlReader {
    pub fn open(path: &Path, file_index: usize, text_key: Option<&str>) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: open", path.display()))?;
        let (file, bytes_read) = Counted::new(file);
        let name = path.to_string_lossy();
        let raw: Box<dyn Read + Send> = if name.ends_with(".gz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else if name.ends_with(".zst") {
            Box::new(
                zstd::Decoder::new(file)
                    .with_context(|| format!("{}: not a zstd stream", path.display()))?,
            )
        } else {
            Box::new(file)
        };
        Ok(Self {
            path: path.to_path_buf(),
            file_index,
            text_key: text_key.map(str::to_owned),
            lines: Box::new(BufReader::with_capacity(1 << 20, raw)),
            line: Vec::new(),
            line_number: 0,
            bytes_read,
        })
    }

    fn bad(&self, reason: String) -> BadRecord {
        BadRecord {
            path: self.path.clone(),
            position: format!("line {}", self.line_number),
            reason,
        }
    }

    fn parse_line(&self) -> Record {
        let fields: HashMap<String, &RawValue> = serde_json::from_slice(&self.line)
            .map_err(|e| self.bad(format!("column {}: malformed JSON: {e}", e.column())))?;
        let keys: &[&str] = match &self.text_key {
            Some(key) => &[key.as_str()][..],
            None => &["text", "content"],
        };
        let Some((key, raw)) = keys
            .iter()
            .find_map(|k| fields.get(*k).map(|raw| (*k, *raw)))
        else {
            let mut present: Vec<&str> = fields.keys().map(String::as_str).collect();
            present.sort_unstable();
            return Err(self.bad(format!(
                "no text key: looked for {keys:?} among {present:?} (choose one with --text-key)"
            )));
        };
        let text: String = serde_json::from_str(raw.get())
            .map_err(|_| self.bad(format!("{key:?} is {}, not a string", kind_of(raw.get()))))?;
        Ok(Document {
            text: text.into(),
            origin: Origin {
                file_index: self.file_index,
                position: self.line_number,
            },
        })
    }
}

fn kind_of(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'n') => "null",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

impl DocumentReader for JsonlReader {
    fn read_batch(
        &mut self,
        out: &mut Vec<Record>,
        max_records: usize,
        max_bytes: usize,
    ) -> anyhow::Result<bool> {
        let start = out.len();
        let mut num_bytes = 0;
        while out.len() - start < max_records && num_bytes < max_bytes {
            self.line.clear();
            let n = self
                .lines
                .read_until(b'\n', &mut self.line)
                .with_context(|| {
                    format!(
                        "{}: read error after line {}",
                        self.path.display(),
                        self.line_number
                    )
                })?;
            if n == 0 {
                return Ok(false);
            }
            self.line_number += 1;
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            num_bytes += self.line.len();
            out.push(self.parse_line());
            if self.line.capacity() > LINE_BUFFER_KEPT {
                // A huge line was read: do not hold its buffer while the document is tokenized.
                self.line = Vec::new();
            }
        }
        Ok(true)
    }

    /// Bytes of the file itself (compressed, for `.gz` and `.zst`) read so far.
    fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
}
