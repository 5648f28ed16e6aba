//! Parquet: stream row groups, decode only the text column.

use std::fs::File;
use std::path::Path;

use anyhow::Context;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::columnar::{ColumnCursor, text_column};
use super::{DocumentReader, Record};

/// Rows decoded per Arrow batch; bounds memory together with the row-group streaming.
const ROWS_PER_BATCH: usize = 256;

pub struct ParquetReader {
    reader: ParquetRecordBatchReader,
    cursor: ColumnCursor,
    num_rows: u64,
    num_bytes: u64,
}

impl ParquetReader {
    pub fn open(path: &Path, file_index: usize, text_key: Option<&str>) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: open", path.display()))?;
        let num_bytes = file.metadata().map_or(0, |m| m.len());
        // Read through a memory map: the column chunks are decoded where they lie, with no copy into
        // buffers first (that copy was 7% of flame-prep's time on the GPT-2 benchmark).
        let bytes = if num_bytes == 0 {
            bytes::Bytes::new()
        } else {
            // SAFETY: the map is read-only and lives as long as the `Bytes` that owns it. Inputs are not
            // written while flame-prep reads them; a file truncated underneath would fault, as it does
            // for every reader that maps its inputs (Megatron's included).
            let map = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("{}: map", path.display()))?;
            bytes::Bytes::from_owner(map)
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .with_context(|| format!("{}: not a readable parquet file", path.display()))?;
        let (column, index) = text_column(builder.schema(), text_key, path)?;
        let leaf = builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.path().parts().first().map(String::as_str) == Some(column.as_str()))
            .unwrap_or(index);
        let num_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [leaf]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(ROWS_PER_BATCH)
            .build()
            .with_context(|| format!("{}: reading column {column:?}", path.display()))?;
        // Only the projected column is decoded, so it is column 0 of every batch.
        Ok(Self {
            reader,
            cursor: ColumnCursor::new(path.to_path_buf(), file_index, 0),
            num_rows,
            num_bytes,
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
        self.cursor
            .read(&mut self.reader, out, max_records, max_bytes)
    }

    /// The share of rows read, applied to the file size.
    fn bytes_read(&self) -> u64 {
        if self.num_rows == 0 {
            return 0;
        }
        let share =
            u128::from(self.cursor.rows_read().min(self.num_rows)) * u128::from(self.num_bytes);
        u64::try_from(share / u128::from(self.num_rows)).unwrap_or(self.num_bytes)
    }
}
