//! Reading a string column out of a stream of Arrow record batches: shared by the Parquet and Arrow IPC readers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{ArrowError, DataType, Schema};

use super::{BadRecord, Document, Origin, Record, Text, pick_text_column};

/// Where a reader stands in a stream of record batches.
#[derive(Debug)]
pub struct ColumnCursor {
    path: PathBuf,
    file_index: usize,
    column: usize,
    pending: Option<(RecordBatch, usize)>,
    next_row: u64,
}

/// The text column of `schema` (see [`pick_text_column`]): its name and index, checked to hold strings.
pub fn text_column(
    schema: &Schema,
    text_key: Option<&str>,
    path: &Path,
) -> anyhow::Result<(String, usize)> {
    let name = pick_text_column(
        schema.fields().iter().map(|f| f.name().as_str()),
        text_key,
        path,
    )?;
    let (index, field) = schema
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
    Ok((name, index))
}

impl ColumnCursor {
    /// A cursor over column `column` of the batches of file `file_index` at `path`.
    pub fn new(path: PathBuf, file_index: usize, column: usize) -> Self {
        Self {
            path,
            file_index,
            column,
            pending: None,
            next_row: 0,
        }
    }

    /// Rows read so far.
    pub fn rows_read(&self) -> u64 {
        self.next_row
    }

    /// Appends records from `batches` to `out` (see `DocumentReader::read_batch`); a null text is a bad
    /// record, an empty one a document.
    pub fn read(
        &mut self,
        batches: &mut dyn Iterator<Item = Result<RecordBatch, ArrowError>>,
        out: &mut Vec<Record>,
        max_records: usize,
        max_bytes: usize,
    ) -> anyhow::Result<bool> {
        let start = out.len();
        let mut num_bytes = 0;
        while out.len() - start < max_records && num_bytes < max_bytes {
            let (batch, mut row) = match self.pending.take() {
                Some(pending) => pending,
                None => match batches.next() {
                    None => return Ok(false),
                    Some(batch) => (
                        batch.with_context(|| {
                            format!(
                                "{}: corrupt data near row {}",
                                self.path.display(),
                                self.next_row
                            )
                        })?,
                        0,
                    ),
                },
            };
            let column = batch.column(self.column);
            while row < column.len() && out.len() - start < max_records && num_bytes < max_bytes {
                let position = self.next_row;
                self.next_row += 1;
                let bad = |reason: &str| BadRecord {
                    path: self.path.clone(),
                    position: format!("row {position}"),
                    reason: reason.into(),
                };
                let text = match column.data_type() {
                    _ if column.is_null(row) => None,
                    DataType::Utf8 => Some(column.as_string::<i32>().value(row)),
                    DataType::LargeUtf8 => Some(column.as_string::<i64>().value(row)),
                    _ => Some(column.as_string_view().value(row)),
                };
                out.push(match text {
                    None => Err(bad("text is null")),
                    Some(text) => {
                        num_bytes += text.len();
                        Ok(Document {
                            text: Text::in_column(Arc::clone(column), row),
                            origin: Origin {
                                file_index: self.file_index,
                                position,
                            },
                        })
                    }
                });
                row += 1;
            }
            if row < column.len() {
                self.pending = Some((batch, row));
            }
        }
        Ok(true)
    }
}
