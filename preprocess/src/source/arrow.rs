//! Arrow IPC files: the file format, and the stream format that `datasets` writes for its cache and
//! for `save_to_disk` (`data-00000-of-00001.arrow`).

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use arrow_array::RecordBatchReader;

use super::columnar::{ColumnCursor, text_column};
use super::{Counted, DocumentReader, Record};

pub struct ArrowReader {
    batches: Box<dyn RecordBatchReader + Send>,
    cursor: ColumnCursor,
    bytes_read: Arc<AtomicU64>,
}

impl ArrowReader {
    pub fn open(path: &Path, file_index: usize, text_key: Option<&str>) -> anyhow::Result<Self> {
        let mut file = File::open(path).with_context(|| format!("{}: open", path.display()))?;
        let mut magic = [0u8; 6];
        let is_file_format = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
        file.rewind()
            .with_context(|| format!("{}: seek", path.display()))?;
        let (file, bytes_read) = Counted::new(file);
        let batches: Box<dyn RecordBatchReader + Send> = if is_file_format {
            Box::new(
                arrow_ipc::reader::FileReader::try_new(file, None).with_context(|| {
                    format!("{}: not a readable Arrow IPC file", path.display())
                })?,
            )
        } else {
            Box::new(
                arrow_ipc::reader::StreamReader::try_new(
                    BufReader::with_capacity(1 << 20, file),
                    None,
                )
                .with_context(|| {
                    format!(
                        "{}: not a readable Arrow IPC file or stream",
                        path.display()
                    )
                })?,
            )
        };
        let (_, column) = text_column(&batches.schema(), text_key, path)?;
        Ok(Self {
            batches,
            cursor: ColumnCursor::new(path.to_path_buf(), file_index, column),
            bytes_read,
        })
    }
}

impl DocumentReader for ArrowReader {
    fn read_batch(
        &mut self,
        out: &mut Vec<Record>,
        max_records: usize,
        max_bytes: usize,
    ) -> anyhow::Result<bool> {
        self.cursor
            .read(&mut self.batches, out, max_records, max_bytes)
    }

    fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
}
