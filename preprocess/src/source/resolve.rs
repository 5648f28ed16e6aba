//! Turning `--dataset` into an ordered list of local files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use flame_formats::prefix::natural_cmp;

use super::SourceFormat;

/// One input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    /// Where it is; for a file still remote (`remote` is set), where it goes, relative to a cache.
    pub path: PathBuf,
    /// How to read it.
    pub format: SourceFormat,
    /// Its size, for progress and the manifest.
    pub num_bytes: u64,
    /// Where it came from, for the manifest: the path, a hub URL or an object-store URL.
    pub uri: String,
    /// How to fetch it, while it is still remote: set by the deferred listings
    /// (`Config::listed`), which download nothing; `None` for a file on disk.
    pub remote: Option<RemoteFile>,
}

/// A remote input not yet downloaded: what [`RemoteFile::fetch`] needs to download it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteFile {
    /// An object of an object store (`s3://`, `gs://`, `az://`, `http(s)://`).
    Object {
        /// `SCHEME://BUCKET/KEY`.
        url: String,
        /// Its size.
        num_bytes: u64,
        /// Its ETag when listed (empty when the store gives none).
        etag: String,
    },
    /// A file of a Hugging Face hub dataset at a commit.
    Hub {
        /// `OWNER/NAME`.
        repo_id: String,
        /// The commit listed.
        commit: String,
        /// The path in the repo.
        file: String,
        /// Its size.
        num_bytes: u64,
    },
}

impl RemoteFile {
    /// The bytes it takes on disk once fetched: the file, and the record of its ETag beside it.
    pub fn disk_bytes(&self) -> u64 {
        match self {
            Self::Object {
                num_bytes, etag, ..
            } => num_bytes + etag.len() as u64,
            Self::Hub { num_bytes, .. } => *num_bytes,
        }
    }

    /// Where it is fetched from, for errors: the object's URL, or the hub file's `hf://` URL.
    pub fn url(&self) -> String {
        match self {
            Self::Object { url, .. } => url.clone(),
            Self::Hub {
                repo_id,
                commit,
                file,
                ..
            } => format!("hf://datasets/{repo_id}@{commit}/{file}"),
        }
    }

    /// Whether `local` already holds it (its size, and its ETag as recorded when it was fetched).
    pub fn is_fetched(&self, local: &Path) -> bool {
        match self {
            Self::Object {
                num_bytes, etag, ..
            } => super::remote::is_fetched(local, *num_bytes, etag),
            Self::Hub { num_bytes, .. } => super::remote::is_fetched(local, *num_bytes, ""),
        }
    }

    /// Downloads it to `local` unless it is there already: to a temporary name beside it, checked
    /// against its size (and ETag), then renamed. Object stores take their endpoint and credentials from
    /// the environment, as flame-prep does; the hub its `HF_ENDPOINT` and `HF_TOKEN` (`HF_HUB_OFFLINE`
    /// refuses).
    ///
    /// # Errors
    /// The download fails or is cut short, or `local` cannot be written; the error names the URL.
    pub fn fetch(&self, local: &Path) -> anyhow::Result<()> {
        if self.is_fetched(local) {
            return Ok(());
        }
        match self {
            Self::Object {
                url,
                num_bytes,
                etag,
            } => super::remote::fetch_object(url, *num_bytes, etag, local),
            Self::Hub {
                repo_id,
                commit,
                file,
                num_bytes,
            } => super::hub::fetch_file(repo_id, commit, file, *num_bytes, local),
        }
        .with_context(|| format!("{}: downloading", self.url()))
    }
}

/// The files of `dataset` (a file, a directory or a glob) for `split`, in natural order.
///
/// In a directory, files whose relative path names the split the way `datasets` lays out parquet repos
/// (`data/train-00000-of-00002.parquet`, `train/…`, `…_train.jsonl`) are taken; if no file names any
/// split, every file belongs to `train`.
pub fn resolve_inputs(dataset: &str, split: &str) -> anyhow::Result<Vec<InputFile>> {
    let path = Path::new(dataset);
    let mut files = if dataset.contains(['*', '?', '[']) {
        let mut found = Vec::new();
        for entry in glob::glob(dataset).with_context(|| format!("{dataset}: not a valid glob"))? {
            let entry = entry.with_context(|| format!("{dataset}: reading a match"))?;
            if SourceFormat::of(&entry).is_some() && entry.is_file() {
                found.push(entry);
            }
        }
        anyhow::ensure!(
            !found.is_empty(),
            "{dataset}: the glob matches no readable file (parquet, jsonl[.gz|.zst], arrow, txt)"
        );
        found
    } else if path.is_dir() {
        let mut found = Vec::new();
        walk(path, &mut found)?;
        let named = found
            .iter()
            .filter(|f| names_split(f.strip_prefix(path).unwrap_or(f), split))
            .cloned()
            .collect::<Vec<_>>();
        let any_split_named = found.iter().any(|f| {
            ["train", "validation", "test"]
                .iter()
                .any(|s| names_split(f.strip_prefix(path).unwrap_or(f), s))
        });
        if !named.is_empty() {
            named
        } else if split == "train" && !any_split_named {
            found
        } else {
            anyhow::bail!(
                "{dataset}: no file for split {split:?} (files are matched as {split}-*, {split}_*, {split}/*, *-{split}.*)"
            );
        }
    } else if path.is_file() {
        anyhow::ensure!(
            SourceFormat::of(path).is_some(),
            "{dataset}: unknown format (expected .parquet, .jsonl/.json[.gz|.zst], .arrow or .txt)"
        );
        vec![path.to_path_buf()]
    } else {
        anyhow::bail!("{dataset}: no such file or directory");
    };
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    files.dedup();
    anyhow::ensure!(
        !files.is_empty(),
        "{dataset}: no readable file (parquet, jsonl[.gz|.zst], arrow, txt)"
    );
    files
        .into_iter()
        .map(|path| {
            let num_bytes = std::fs::metadata(&path)
                .with_context(|| format!("{}: stat", path.display()))?
                .len();
            let format = SourceFormat::of(&path).expect("filtered above");
            format.check_size(&path, num_bytes)?;
            Ok(InputFile {
                uri: path.display().to_string(),
                path,
                format,
                num_bytes,
                remote: None,
            })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: read directory", dir.display()))?
    {
        let entry = entry.with_context(|| format!("{}: read directory", dir.display()))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if SourceFormat::of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether a relative path names `split` as `datasets` would recognise it.
fn names_split(relative: &Path, split: &str) -> bool {
    relative.components().any(|c| {
        let part = c.as_os_str().to_string_lossy();
        let stem = part.split('.').next().unwrap_or(&part);
        stem == split
            || stem.starts_with(&format!("{split}-"))
            || stem.starts_with(&format!("{split}_"))
            || stem.ends_with(&format!("-{split}"))
            || stem.ends_with(&format!("_{split}"))
            || stem.contains(&format!("-{split}-"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_follow_datasets_conventions() {
        assert!(names_split(
            Path::new("data/train-00000-of-00002.parquet"),
            "train"
        ));
        assert!(names_split(Path::new("train/part.jsonl"), "train"));
        assert!(names_split(
            Path::new("wiki_validation.jsonl"),
            "validation"
        ));
        assert!(!names_split(
            Path::new("data/train-00000-of-00002.parquet"),
            "test"
        ));
        assert!(!names_split(Path::new("data/retrain.parquet"), "train"));
    }

    #[test]
    fn directories_resolve_in_natural_order_per_split() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        for name in [
            "train-10.jsonl",
            "train-2.jsonl",
            "test-0.jsonl",
            "notes.csv",
        ] {
            std::fs::write(dir.path().join("data").join(name), "{}\n").unwrap();
        }
        std::fs::write(dir.path().join(".hidden.jsonl"), "{}\n").unwrap();
        let files = resolve_inputs(dir.path().to_str().unwrap(), "train").unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["train-2.jsonl", "train-10.jsonl"]);
        assert_eq!(
            resolve_inputs(dir.path().to_str().unwrap(), "test")
                .unwrap()
                .len(),
            1
        );
        let err = resolve_inputs(dir.path().to_str().unwrap(), "validation").unwrap_err();
        assert!(
            err.to_string().contains("no file for split \"validation\""),
            "{err}"
        );
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        let err = resolve_inputs(empty.to_str().unwrap(), "train").unwrap_err();
        assert!(
            err.to_string().contains("empty.jsonl: file is empty"),
            "{err}"
        );
        // Issue 16: a plain-text file is one document, and an empty one is an empty document.
        let empty_text = dir.path().join("empty.txt");
        std::fs::write(&empty_text, "").unwrap();
        let files = resolve_inputs(empty_text.to_str().unwrap(), "train").unwrap();
        assert_eq!(files[0].num_bytes, 0);
        let err =
            resolve_inputs(dir.path().join("nope.jsonl").to_str().unwrap(), "train").unwrap_err();
        assert!(
            err.to_string().contains("nope.jsonl: no such file"),
            "{err}"
        );
    }
}
