//! Plain text: the whole file is one document (an empty file, an empty one). Invalid UTF-8 is a bad record
//! naming the byte offset.

use std::path::{Path, PathBuf};

use super::{BadRecord, Document, DocumentReader, Origin, Record};

pub struct TextReader {
    path: PathBuf,
    file_index: usize,
    is_done: bool,
}

impl TextReader {
    pub fn open(path: &Path, file_index: usize) -> Self {
        Self {
            path: path.to_path_buf(),
            file_index,
            is_done: false,
        }
    }
}

impl DocumentReader for TextReader {
    fn read_batch(
        &mut self,
        out: &mut Vec<Record>,
        _max_records: usize,
        _max_bytes: usize,
    ) -> anyhow::Result<bool> {
        if self.is_done {
            return Ok(false);
        }
        self.is_done = true;
        let bytes = std::fs::read(&self.path)
            .map_err(|e| anyhow::anyhow!("{}: read: {e}", self.path.display()))?;
        out.push(match String::from_utf8(bytes) {
            Ok(text) => Ok(Document {
                text: text.into(),
                origin: Origin {
                    file_index: self.file_index,
                    position: 1,
                },
            }),
            Err(e) => Err(BadRecord {
                path: self.path.clone(),
                position: format!("byte {}", e.utf8_error().valid_up_to()),
                reason: "invalid UTF-8".into(),
            }),
        });
        Ok(false)
    }

    fn bytes_read(&self) -> u64 {
        if self.is_done {
            std::fs::metadata(&self.path).map_or(0, |m| m.len())
        } else {
            0
        }
    }
}
