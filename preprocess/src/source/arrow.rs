//! Arrow IPC files: the file format, and the stream format that `datasets` writes for its cache and
//! for `save_to_disk` (`data-00000-of-00001.arrow`).

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, RecordBatchReader};
use arrow_schema::DataType;

use super::{BadRecord, Document, DocumentReader, Origin, Record, pick_text_column};

pub struct ArrowReader {
    path: PathBuf,
    file_index: usize,
    column: usize,
    batches: Box<dyn RecordBatchReader + Send>,
    pending: Option<(RecordBatch, usize)>,
    next_row: u64,
}

impl ArrowReader {
    pub fn open(path: &Path, file_index: usize, text_key: Option<&str>) -> anyhow::Result<Self> {
        let mut file = File::open(path).with_context(|| format!("{}: open", path.display()))?;
        let mut magic = [0u8; 6];
        let is_file_format = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
        file.rewind()
            .with_context(|| format!("{}: seek", path.display()))?;
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
        let schema = batches.schema();
        let name = pick_text_column(
            schema.fields().iter().map(|f| f.name().as_str()),
            text_key,
            path,
        )?;
        let (column, field) = schema
            .column_with_name(&name)
            .expect("picked from the schema");
        anyhow::ensure!(
            matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
            "{}: column {name:?} holds {}, not strings",
            path.display(),
            field.data_type()
        );
        Ok(Self {
            path: path.to_path_buf(),
            file_index,
            column,
            batches,
            pending: None,
            next_row: 0,
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
        let start = out.len();
        let mut num_bytes = 0;
        while out.len() - start < max_records && num_bytes < max_bytes {
            let (batch, offset) = match self.pending.take() {
                Some(pending) => pending,
                None => match self.batches.next() {
                    None => return Ok(false),
                    Some(batch) => (
                        batch.with_context(|| {
                            format!(
                                "{}: corrupt Arrow data near row {}",
                                self.path.display(),
                                self.next_row
                            )
                        })?,
                        0,
                    ),
                },
            };
            let column = batch.column(self.column);
            let mut row = offset;
            while row < column.len() && out.len() - start < max_records && num_bytes < max_bytes {
                let position = self.next_row;
                self.next_row += 1;
                if column.is_null(row) {
                    out.push(Err(BadRecord {
                        path: self.path.clone(),
                        position: format!("row {position}"),
                        reason: "text is null".into(),
                    }));
                } else {
                    let text = match column.data_type() {
                        DataType::Utf8 => column.as_string::<i32>().value(row),
                        DataType::LargeUtf8 => column.as_string::<i64>().value(row),
                        _ => column.as_string_view().value(row),
                    };
                    if text.is_empty() {
                        out.push(Err(BadRecord {
                            path: self.path.clone(),
                            position: format!("row {position}"),
                            reason: "empty document".into(),
                        }));
                        row += 1;
                        continue;
                    }
                    num_bytes += text.len();
                    out.push(Ok(Document {
                        text: text.to_owned(),
                        origin: Origin {
                            file_index: self.file_index,
                            position,
                        },
                    }));
                }
                row += 1;
            }
            if row < column.len() {
                self.pending = Some((batch, row));
            }
        }
        Ok(true)
    }
}
