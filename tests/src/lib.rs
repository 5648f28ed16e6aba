//! Helpers shared by flame's end-to-end tests (where the repository, `../shared` and the built binaries
//! are) and by the crates' own tests ([`fake_hub`], a local Hugging Face hub; [`s3_server`], a local S3;
//! [`parquet_of_texts`], a hub dataset's file).
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

pub mod fake_hub;
pub mod s3_server;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// `../shared` beside the repository (or `$FLAME_SHARED`): tokenizers, corpora and golden ids.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("FLAME_SHARED").map_or_else(|| repo_root().join("../shared"), PathBuf::from)
}

/// A parquet file of one `text` column holding `texts` (the shape of a hub text dataset's files).
///
/// # Panics
/// Never for strings: Arrow and parquet write them.
pub fn parquet_of_texts<S: AsRef<str>>(texts: &[S]) -> Vec<u8> {
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    let column: ArrayRef = std::sync::Arc::new(StringArray::from_iter_values(texts));
    let batch = RecordBatch::try_from_iter([("text", column)]).expect("one column");
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None)
        .expect("an Arrow schema parquet takes");
    writer.write(&batch).expect("a batch of the schema");
    writer.close().expect("parquet into memory");
    bytes
}
