//! Writing files so that nothing half-written ever sits under a final name: write a temporary file
//! beside the target, fsync it, rename it over the target, fsync the directory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The temporary name of `path` while it is being written: `PATH.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    crate::prefix::with_suffix(path, ".tmp")
}

/// Renames the fsynced `temp` to `target` and fsyncs the directory, making `target` durable.
pub fn publish(temp: &Path, target: &Path) -> Result<()> {
    std::fs::rename(temp, target).map_err(|e| Error::io(target, "rename", e))?;
    sync_parent(target)
}

/// Fsyncs the directory holding `path`, so a rename in it survives a crash.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync", e))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = temp_path(path);
    let mut file = File::create(&temp).map_err(|e| Error::io(&temp, "create", e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io(&temp, "write", e))?;
    file.sync_all().map_err(|e| Error::io(&temp, "fsync", e))?;
    drop(file);
    publish(&temp, path)
}

/// A buffered file writer that hashes (SHA-256) and counts what passes through it.
#[derive(Debug)]
pub struct HashingFile {
    path: PathBuf,
    inner: BufWriter<File>,
    hasher: Sha256,
    num_bytes: u64,
}

impl HashingFile {
    /// Creates (truncates) `path`.
    pub fn create(path: PathBuf) -> Result<Self> {
        let file = File::create(&path).map_err(|e| Error::io(&path, "create", e))?;
        Ok(Self {
            path,
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            num_bytes: 0,
        })
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.num_bytes += bytes.len() as u64;
        self.inner
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, "write", e))
    }

    /// Flushes and fsyncs; returns the path, size and lower-case hex SHA-256.
    pub fn finish(self) -> Result<(PathBuf, u64, String)> {
        let file = self
            .inner
            .into_inner()
            .map_err(|e| Error::io(&self.path, "write", e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(&self.path, "fsync", e))?;
        Ok((
            self.path,
            self.num_bytes,
            hex::encode(self.hasher.finalize()),
        ))
    }
}

/// SHA-256 of a whole file, as lower-case hex, with its size.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut hasher = Sha256::new();
    let num_bytes =
        std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, "read", e))?;
    Ok((num_bytes, hex::encode(hasher.finalize())))
}
