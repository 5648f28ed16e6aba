//! Helpers shared by flame's end-to-end tests (where the repository, `../shared` and the built binaries
//! are) and by the crates' own tests ([`fake_hub`], a local Hugging Face hub; [`s3_server`], a local S3).
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
