//! `flame-stream serve --data-root DIR`: the only files a job may name.
//!
//! Without a root, the server opens whatever path a client names, as the user it runs as: any client that
//! can reach it (with the token, if one is set) can read every file of that user's that parses as a
//! dataset. With a [`DataRoot`], a dataset's path (a relative one is taken from the root) must resolve,
//! with symlinks and `..` followed and both sides canonicalised, to the root or below it
//! ([`DataRoot::resolve`]); and so must every file [`Corpus::open`] would open there, each checked before
//! it is opened ([`DataRoot::check_files`]: the manifest before it is read, then its shards; a
//! directory's prefixes; each `.idx` and `.bin`, a packed pair's `_cu_seqlens` included), so a symlink
//! inside the root cannot lead out of it. [`DataRoot::check_corpus`] checks the opened corpus's files
//! again, so one swapped for a link between the check and the opening is not served (it has been opened
//! by then: whoever can write under the root is trusted that far).
//!
//! A refusal names the dataset as the client named it and the root, never where a link led: that is
//! logged on the server only.

use std::path::{Path, PathBuf};

use flame_formats::manifest::MANIFEST_FILE_NAME;
use flame_formats::packed::cu_seqlens_prefix;
use flame_formats::prefix::{bin_path, discover_prefixes, idx_path, normalize_prefix};
use flame_formats::{Corpus, Manifest, Shard};

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
        match canonicalize_through_ancestors(&joined) {
            Some(resolved) if resolved.starts_with(&self.root) => Ok(resolved),
            resolved => Err(self.outside(path, None, resolved.as_deref())),
        }
    }

    /// Checks, before any is opened, that every file [`Corpus::open`] would open at `resolved` (the job's
    /// dataset `path`, [`DataRoot::resolve`]d) lies under the root. Reads nothing but the manifest, and
    /// that only once it has passed.
    pub fn check_files(&self, path: &str, resolved: &Path) -> Result<()> {
        let is_manifest_file = resolved
            .file_name()
            .is_some_and(|n| n == MANIFEST_FILE_NAME)
            && resolved.is_file();
        let prefixes = if is_manifest_file || resolved.join(MANIFEST_FILE_NAME).is_file() {
            let (dir, manifest) = if is_manifest_file {
                (resolved.parent().unwrap_or(resolved), resolved.to_owned())
            } else {
                (resolved, resolved.join(MANIFEST_FILE_NAME))
            };
            self.check_file(path, &manifest)?;
            let manifest = Manifest::load(&manifest).map_err(|e| Error::dataset(path, e))?;
            manifest.shard_prefixes(dir)
        } else if resolved.is_dir() && !idx_path(&normalize_prefix(resolved)).is_file() {
            // Every `.idx` in the directory: a packed pair's `_cu_seqlens` is one of them.
            discover_prefixes(resolved).map_err(|e| Error::dataset(path, e))?
        } else {
            vec![normalize_prefix(resolved)]
        };
        for prefix in &prefixes {
            for pair in [prefix.clone(), cu_seqlens_prefix(prefix)] {
                self.check_file(path, &idx_path(&pair))?;
                self.check_file(path, &bin_path(&pair))?;
            }
        }
        Ok(())
    }

    /// Checks that every file of `corpus`, opened from the job's dataset `path`, lies under the root.
    pub fn check_corpus(&self, path: &str, corpus: &Corpus) -> Result<()> {
        if corpus.manifest().is_some() {
            self.check_file(path, &corpus.root().join(MANIFEST_FILE_NAME))?;
        }
        for shard in corpus.shards() {
            let mut prefixes = vec![shard.tokens().prefix()];
            if let Shard::Packed(packed) = shard {
                prefixes.push(packed.cu_seqlens().prefix());
            }
            for prefix in prefixes {
                self.check_file(path, &idx_path(prefix))?;
                self.check_file(path, &bin_path(prefix))?;
            }
        }
        Ok(())
    }

    /// Checks that `file` of the job's dataset `path`, if there is anything by that name, leads to the
    /// root or below (a file that is not there is the opening's error to report, under its own name).
    fn check_file(&self, path: &str, file: &Path) -> Result<()> {
        if std::fs::symlink_metadata(file).is_err() {
            return Ok(());
        }
        match file.canonicalize() {
            Ok(resolved) if resolved.starts_with(&self.root) => Ok(()),
            // A link to nothing cannot be told from a link out of the root.
            resolved => Err(self.outside(path, Some(file), resolved.ok().as_deref())),
        }
    }

    /// The refusal of dataset `path` (its `file`, when one file of it leads out): logged with where it
    /// leads (`resolved`, as far as it could be resolved), sent without it.
    fn outside(&self, path: &str, file: Option<&Path>, resolved: Option<&Path>) -> Error {
        let file = file.map(|f| f.strip_prefix(&self.root).unwrap_or(f).to_path_buf());
        tracing::warn!(
            dataset = path,
            file = ?file,
            resolved = ?resolved,
            root = %self.root.display(),
            "Refused a dataset that leads outside the data root."
        );
        Error::OutsideDataRoot {
            path: path.to_owned(),
            file,
            root: self.root.clone(),
        }
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
            // Where a link led is the server's to know: only the path as the client named it is sent.
            if !path.starts_with('/') {
                let outside = dir.path().canonicalize().unwrap().join("secret");
                assert!(!message.contains(outside.to_str().unwrap()), "{message}");
            }
        }
    }
}
