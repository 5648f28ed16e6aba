//! `flame-stream serve --data-root DIR`: the only files a job may name.
//!
//! Without a root, the server opens whatever path a client names, as the user it runs as: any client that
//! can reach it (with the token, if one is set) can read every file of that user's that parses as a
//! dataset. With a [`DataRoot`], a dataset's path (a relative one is taken from the root) must resolve,
//! with symlinks and `..` followed and both sides canonicalised, to the root or below it
//! ([`DataRoot::resolve`], before anything is opened); and so must every file the dataset turns out to be
//! made of ([`DataRoot::check_corpus`]: a manifest's shards, a directory's prefixes, each `.idx` and
//! `.bin`), so a symlink inside the root cannot lead out of it.

use std::path::{Path, PathBuf};

use flame_formats::manifest::MANIFEST_FILE_NAME;
use flame_formats::prefix::{bin_path, idx_path};
use flame_formats::{Corpus, Shard};

use crate::error::{Error, Result};

/// The directory every dataset of every job must lie under (canonical).
#[derive(Clone, Debug)]
pub struct DataRoot {
    root: PathBuf,
}

impl DataRoot {
    /// The root at `dir`, which must be a directory.
    ///
    /// # Errors
    /// When `dir` does not exist or is not a directory.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let root = dir.canonicalize().map_err(|e| {
            std::io::Error::new(e.kind(), format!("data root {}: {e}", dir.display()))
        })?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!(
                "data root {}: not a directory",
                dir.display()
            )));
        }
        Ok(Self { root })
    }

    /// The canonical root.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where a job's dataset `path` points, canonical; refused unless it is under the root.
    ///
    /// A path that does not exist as given (a Megatron prefix names `PREFIX.idx` and `PREFIX.bin`) is
    /// resolved through its longest existing ancestor; a `..` after a part that does not exist is refused.
    pub fn resolve(&self, path: &str) -> Result<PathBuf> {
        let joined = self.root.join(path);
        let outside = |resolved: PathBuf| Error::OutsideDataRoot {
            path: path.to_owned(),
            resolved,
            root: self.root.clone(),
        };
        let resolved = canonicalize_through_ancestors(&joined).ok_or_else(|| outside(joined))?;
        if resolved.starts_with(&self.root) {
            Ok(resolved)
        } else {
            Err(outside(resolved))
        }
    }

    /// Checks that every file of `corpus`, opened from the job's dataset `path`, lies under the root.
    pub fn check_corpus(&self, path: &str, corpus: &Corpus) -> Result<()> {
        let mut files = Vec::new();
        if corpus.manifest().is_some() {
            files.push(corpus.root().join(MANIFEST_FILE_NAME));
        }
        for shard in corpus.shards() {
            let mut prefixes = vec![shard.tokens().prefix()];
            if let Shard::Packed(packed) = shard {
                prefixes.push(packed.cu_seqlens().prefix());
            }
            for prefix in prefixes {
                files.extend([idx_path(prefix), bin_path(prefix)]);
            }
        }
        for file in files {
            match file.canonicalize() {
                Ok(resolved) if resolved.starts_with(&self.root) => {}
                Ok(resolved) => {
                    return Err(Error::OutsideDataRoot {
                        path: path.to_owned(),
                        resolved,
                        root: self.root.clone(),
                    });
                }
                Err(_) => {
                    return Err(Error::OutsideDataRoot {
                        path: path.to_owned(),
                        resolved: file,
                        root: self.root.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// `path` canonicalised, its missing last parts appended as they are; `None` when a missing part is
/// followed by anything but plain names.
fn canonicalize_through_ancestors(path: &Path) -> Option<PathBuf> {
    let mut existing = path;
    let mut missing = Vec::new();
    loop {
        if let Ok(resolved) = existing.canonicalize() {
            return Some(missing.iter().rev().fold(resolved, |p, name| p.join(name)));
        }
        missing.push(existing.file_name()?);
        existing = existing.parent()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_the_root_or_are_refused_with_both_named() {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = dir.path().join("root");
        std::fs::create_dir_all(root_dir.join("data")).unwrap();
        std::fs::write(root_dir.join("data/a.idx"), b"").unwrap();
        std::fs::write(dir.path().join("secret.idx"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path(), root_dir.join("escape")).unwrap();
        let root = DataRoot::new(&root_dir).unwrap();
        let canonical = root_dir.canonicalize().unwrap();
        // Inside: relative, absolute, a prefix that exists only as PREFIX.idx, a harmless `..`.
        for (path, want) in [
            ("data/a", "data/a"),
            ("data/../data/a", "data/a"),
            ("data/not-yet", "data/not-yet"),
        ] {
            assert_eq!(root.resolve(path).unwrap(), canonical.join(want), "{path}");
        }
        let absolute = root_dir.join("data/a");
        assert_eq!(
            root.resolve(absolute.to_str().unwrap()).unwrap(),
            canonical.join("data/a")
        );
        // Outside: another absolute path, a `..` escape, a symlink out, `..` past a missing part.
        for path in [
            dir.path().join("secret").to_str().unwrap(),
            "../secret",
            "data/../../secret",
            "escape/secret",
            "missing/../../secret",
            "/etc/passwd",
        ] {
            let err = root.resolve(path).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, Error::OutsideDataRoot { .. })
                    && message.contains(path)
                    && message.contains(canonical.to_str().unwrap()),
                "{path}: {message}"
            );
        }
    }
}
