//! Parquet: stream row groups, decode only the text column.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{BadRecord, Document, DocumentReader, Origin, Record, pick_text_column};

/// Rows decoded per Arrow batch; bounds memory together with the row-group streaming.
const ROWS_PER_BATCH: usize = 256;

pub struct ParquetReader {
    path: PathBuf,
    file_index: usize,
    reader: ParquetRecordBatchReader,
    pending: Option<(RecordBatch, usize)>,
    next_row: u64,
}

impl ParquetReader {
    pub fn open(path: &Path, file_index: usize, text_key: Option<&str>) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: open", path.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{}: not a readable parquet file", path.display()))?;
        let schema = builder.schema().clone();
        let column = pick_text_column(
            schema.fields().iter().map(|f| f.name().as_str()),
            text_key,
            path,
        )?;
        let (index, field) = schema
            .column_with_name(&column)
            .expect("picked from the schema");
        anyhow::ensure!(
            matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
            "{}: column {column:?} holds {}, not strings",
            path.display(),
            field.data_type()
        );
        let leaf = builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.path().parts().first().map(String::as_str) == Some(column.as_str()))
            .unwrap_or(index);
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [leaf]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(ROWS_PER_BATCH)
            .build()
            .with_context(|| format!("{}: reading column {column:?}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file_index,
            reader,
            pending: None,
            next_row: 0,
        })
    }
}

impl DocumentReader for ParquetReader {
    fn read_batch(
        &mut self,
        out: &mut Vec<Record>,
        max_records: usize,
        max_bytes: usize,
    ) -> anyhow::Result<bool> {
        let mut num_bytes = 0;
        let start = out.len();
        while out.len() - start < max_records && num_bytes < max_bytes {
            let (batch, offset) = match self.pending.take() {
                Some(pending) => pending,
                None => match self.reader.next() {
                    None => return Ok(false),
                    Some(batch) => (
                        batch.with_context(|| {
                            format!(
                                "{}: corrupt parquet data near row {}",
                                self.path.display(),
                                self.next_row
                            )
                        })?,
                        0,
                    ),
                },
            };
            let column = batch.column(0);
            let mut row = offset;
            while row < column.len() && out.len() - start < max_records && num_bytes < max_bytes {
                let position = self.next_row;
                self.next_row += 1;
                let origin = Origin {
                    file_index: self.file_index,
                    position,
                };
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
                        origin,
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
