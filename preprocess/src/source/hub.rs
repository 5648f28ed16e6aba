//! Hugging Face hub datasets and tokenizers, through `hf-hub`, into the standard hub cache.
//!
//! Files are chosen the way `datasets` chooses them for parquet repos: the README's YAML `configs:` list
//! (`config_name`, `data_files` with per-split glob patterns) when there is one, else the default layout
//! (`data/train-*`, `train/…`). Honours `HF_HOME` (cache at `$HF_HOME/hub`), `HF_ENDPOINT`, `HF_TOKEN` and
//! `HF_HUB_OFFLINE`; when the hub cannot be reached, a repo already in the cache is used from there.
//!
//! [`list_hub`] chooses the same files without downloading them (a streaming server fetches each as it
//! goes, [`super::RemoteFile::fetch`]): files already in the hub cache are used from there, the others are
//! listed with their size at the listed commit. It keeps the listing, so that the dataset is listed again
//! offline (`HF_HUB_OFFLINE`, or the hub unreachable) from what was fetched before.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use yaml_rust2::{Yaml, YamlLoader};

use super::remote::publish_fetched;
use super::{InputFile, RemoteFile, SourceFormat};
use flame_formats::prefix::natural_cmp;

const ALIASES: &str = include_str!("../../../configs/datasets.toml");
const REVISION: &str = "main";

/// The hub id an alias or id names, if `dataset` looks like one and is not a local path.
pub fn hub_id(dataset: &str) -> anyhow::Result<Option<String>> {
    aliased("aliases", dataset)
}

/// The hub model id a short name (`gpt2`, from `[tokenizers]` in `configs/datasets.toml`) or an id
/// names, if `model` looks like one and is not a local path: where tokenizers and checkpoints come from.
pub fn model_id(model: &str) -> anyhow::Result<Option<String>> {
    aliased("tokenizers", model)
}

/// `name` as the alias table `table` of `configs/datasets.toml` maps it, else as it is if it has the
/// shape of a hub id (`owner/name`).
fn aliased(table: &str, name: &str) -> anyhow::Result<Option<String>> {
    let aliases: toml::Table = ALIASES.parse().context("configs/datasets.toml")?;
    if let Some(id) = aliases
        .get(table)
        .and_then(|a| a.get(name))
        .and_then(toml::Value::as_str)
    {
        return Ok(Some(id.to_owned()));
    }
    let parts: Vec<&str> = name.split('/').collect();
    let is_id = parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    Ok(is_id.then(|| name.to_owned()))
}

/// flame's default tokenizer (a hub model id) from `configs/datasets.toml`.
pub fn default_tokenizer() -> anyhow::Result<String> {
    let table: toml::Table = ALIASES.parse().context("configs/datasets.toml")?;
    table
        .get("tokenizers")
        .and_then(|t| t.get("default"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .context("configs/datasets.toml: [tokenizers] default")
}

fn is_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// A hub client storing into `cache`, with the standard cache's token (a staging cache has none).
fn api(cache: &Cache) -> anyhow::Result<Api> {
    let mut builder = ApiBuilder::from_cache(cache.clone())
        .with_progress(false)
        .with_retries(2)
        .with_token(Cache::from_env().token());
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_owned());
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    builder
        .build()
        .context("setting up the Hugging Face hub client")
}

/// Finds (downloading if needed) a repo file locally.
type Locate = Box<dyn Fn(&str) -> anyhow::Result<PathBuf>>;

/// A repo's files: from the hub, or from the cache when offline or unreachable.
struct Listing {
    files: Vec<String>,
    /// Where each file is (or will be) locally.
    local: Locate,
}

fn list(repo_id: &str, kind: RepoType) -> anyhow::Result<Listing> {
    let cache = Cache::from_env();
    let repo = Repo::with_revision(repo_id.to_owned(), kind, REVISION.to_owned());
    let from_cache = |reason: &str| -> anyhow::Result<Listing> {
        let snapshot = cached_snapshot(&cache, &repo).with_context(|| {
            format!(
                "{repo_id}: {reason}, and it is not in the hub cache at {}. Run once where the hub is reachable \
                 (HF_ENDPOINT for a mirror, HF_TOKEN for gated repos), or point HF_HOME at a cache that has it.",
                cache.path().display()
            )
        })?;
        let mut files = Vec::new();
        walk_relative(&snapshot, &snapshot, &mut files)?;
        Ok(Listing {
            files,
            local: Box::new(move |f| Ok(snapshot.join(f))),
        })
    };
    if is_offline() {
        return from_cache("HF_HUB_OFFLINE is set");
    }
    let api = api(&cache)?;
    match api.repo(repo.clone()).info() {
        Ok(info) => {
            let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
            let handle = api.repo(repo);
            let id = repo_id.to_owned();
            Ok(Listing {
                files,
                local: Box::new(move |f| {
                    handle
                        .get(f)
                        .with_context(|| format!("{id}: downloading {f}"))
                }),
            })
        }
        Err(e) => {
            tracing::debug!(repo = repo_id, error = %e, "The hub is unreachable; trying the local cache.");
            let endpoint =
                std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
            let listing = from_cache(&format!("the hub at {endpoint} cannot be reached ({e})"))?;
            tracing::info!(repo = repo_id, %endpoint, "The hub cannot be reached; using the cached snapshot.");
            Ok(listing)
        }
    }
}

fn cached_snapshot(cache: &Cache, repo: &Repo) -> Option<PathBuf> {
    let root = cache.path().join(repo.folder_name());
    let commit = std::fs::read_to_string(root.join("refs").join(repo.revision())).ok()?;
    let snapshot = root.join("snapshots").join(commit.trim());
    snapshot.is_dir().then_some(snapshot)
}

fn walk_relative(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: read directory", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("{}: read directory", dir.display()))?
            .path();
        if path.is_dir() {
            walk_relative(root, &path, out)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// The input files of `repo_id` for config `name` and `split`, downloaded into the hub cache.
pub fn resolve_hub(
    repo_id: &str,
    name: Option<&str>,
    split: &str,
) -> anyhow::Result<Vec<InputFile>> {
    let listing = list(repo_id, RepoType::Dataset)?;
    let readme = if listing.files.iter().any(|f| f == "README.md") {
        Some(
            std::fs::read_to_string((listing.local)("README.md")?)
                .with_context(|| format!("{repo_id}: reading README.md"))?,
        )
    } else {
        None
    };
    let selected = select_files(&listing.files, readme.as_deref(), name, split)
        .with_context(|| format!("{repo_id}: choosing files"))?;
    tracing::info!(
        repo = repo_id,
        files = selected.len(),
        "Resolved hub dataset."
    );
    selected
        .iter()
        .map(|file| {
            let path = (listing.local)(file)?;
            let num_bytes = std::fs::metadata(&path)
                .with_context(|| format!("{}: stat", path.display()))?
                .len();
            let format = SourceFormat::of(Path::new(file)).expect("selected by format");
            format.check_size(&path, num_bytes)?;
            Ok(InputFile {
                format,
                path,
                num_bytes,
                uri: format!("hf://datasets/{repo_id}/{file}"),
                remote: None,
            })
        })
        .collect()
}

/// A dataset repo's files at a commit, with their sizes: what [`list_hub`] keeps for offline use.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SizedListing {
    /// The commit `main` pointed at.
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
}

/// The input files of hub dataset `repo_id` for config `name` and `split`, listed without downloading
/// them: a file in the standard hub cache is used from there; any other is a [`RemoteFile::Hub`] at the
/// listed commit, its `path` `hf/datasets--OWNER--NAME/COMMIT/FILE` (where a cache keeps it). The listing
/// is kept in `listings`; offline (`HF_HUB_OFFLINE`, or the hub unreachable) the kept one is used, or,
/// without one, the hub cache's snapshot as [`resolve_hub`] uses it.
///
/// # Errors
/// Neither the hub nor a kept listing nor the cache has the repo; no file matches; the README (fetched
/// into the hub cache) cannot be read.
pub fn list_hub(
    repo_id: &str,
    name: Option<&str>,
    split: &str,
    listings: &Path,
) -> anyhow::Result<Vec<InputFile>> {
    let cache = Cache::from_env();
    let repo = Repo::with_revision(repo_id.to_owned(), RepoType::Dataset, REVISION.to_owned());
    let kept = listings
        .join(repo.folder_name())
        .join(format!("{REVISION}.json"));
    let listing = if is_offline() {
        None
    } else {
        match fetch_listing(&cache, repo_id) {
            Ok(listing) => {
                let dir = kept.parent().expect("under the listings");
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("{}: create", dir.display()))?;
                flame_formats::write_atomic(&kept, &serde_json::to_vec(&listing)?)?;
                Some(listing)
            }
            Err(e) => {
                tracing::info!(repo = repo_id, error = %format!("{e:#}"), "The hub cannot be reached; using the kept listing.");
                None
            }
        }
    };
    let listing = match listing {
        Some(listing) => listing,
        None => match std::fs::read(&kept) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: a kept hub listing", kept.display()))?,
            Err(_) => return resolve_hub(repo_id, name, split),
        },
    };
    let snapshot = cache
        .path()
        .join(repo.folder_name())
        .join("snapshots")
        .join(&listing.sha);
    let files: Vec<String> = listing
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .collect();
    let readme = if files.iter().any(|f| f == "README.md") {
        let path = snapshot.join("README.md");
        Some(std::fs::read_to_string(&path).with_context(|| {
            format!("{repo_id}: reading README.md (fetched into the hub cache when listed)")
        })?)
    } else {
        None
    };
    let selected = select_files(&files, readme.as_deref(), name, split)
        .with_context(|| format!("{repo_id}: choosing files"))?;
    selected
        .iter()
        .map(|file| {
            let format = SourceFormat::of(Path::new(file)).expect("selected by format");
            let uri = format!("hf://datasets/{repo_id}/{file}");
            let in_cache = snapshot.join(file);
            if in_cache.is_file() {
                let num_bytes = std::fs::metadata(&in_cache)
                    .with_context(|| format!("{}: stat", in_cache.display()))?
                    .len();
                return Ok(InputFile {
                    path: in_cache,
                    format,
                    num_bytes,
                    uri,
                    remote: None,
                });
            }
            let num_bytes = listing
                .siblings
                .iter()
                .find(|s| &s.rfilename == file)
                .and_then(|s| s.size)
                .with_context(|| format!("{uri}: the hub's listing gives no size"))?;
            Ok(InputFile {
                path: Path::new("hf")
                    .join(repo.folder_name())
                    .join(&listing.sha)
                    .join(file),
                format,
                num_bytes,
                uri,
                remote: Some(RemoteFile::Hub {
                    repo_id: repo_id.to_owned(),
                    commit: listing.sha.clone(),
                    file: file.clone(),
                    num_bytes,
                }),
            })
        })
        .collect()
}

/// The repo's files with their sizes (`?blobs=true`), its README fetched into the hub cache.
fn fetch_listing(cache: &Cache, repo_id: &str) -> anyhow::Result<SizedListing> {
    let api = api(cache)?;
    let handle = api.dataset(repo_id.to_owned());
    let body = handle
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_string()
        .context("reading the hub's answer")?;
    let listing: SizedListing =
        serde_json::from_str(&body).context("the hub's listing is not the JSON expected")?;
    if listing.siblings.iter().any(|s| s.rfilename == "README.md") {
        let at_commit = api.repo(Repo::with_revision(
            repo_id.to_owned(),
            RepoType::Dataset,
            listing.sha.clone(),
        ));
        at_commit
            .get("README.md")
            .with_context(|| format!("{repo_id}: downloading README.md"))?;
    }
    Ok(listing)
}

/// Downloads `file` of dataset `repo_id` at `commit` (`num_bytes` bytes) to `local`, through hf-hub
/// (its endpoint, token and retries) into a private staging cache beside `local`, then checks and
/// renames it.
pub(crate) fn fetch_file(
    repo_id: &str,
    commit: &str,
    file: &str,
    num_bytes: u64,
    local: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !is_offline(),
        "HF_HUB_OFFLINE is set, and the file is not cached"
    );
    let staging = flame_formats::temp_path(local);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("{}: create", staging.display()))?;
    let fetched = api(&Cache::new(staging.clone()))?
        .repo(Repo::with_revision(
            repo_id.to_owned(),
            RepoType::Dataset,
            commit.to_owned(),
        ))
        .download(file)
        .map_err(anyhow::Error::new)
        .and_then(|pointer| {
            let blob = std::fs::canonicalize(&pointer)
                .with_context(|| format!("{}: resolve", pointer.display()))?;
            let url = format!("hf://datasets/{repo_id}@{commit}/{file}");
            publish_fetched(&blob, local, &url, (num_bytes, ""))
        });
    let _ = std::fs::remove_dir_all(&staging);
    fetched
}

/// `tokenizer.json` (and `tokenizer_config.json` when the repo has one) of a hub model, from the cache.
pub fn resolve_tokenizer(model_id: &str) -> anyhow::Result<PathBuf> {
    let listing = list(model_id, RepoType::Model)?;
    anyhow::ensure!(
        listing.files.iter().any(|f| f == "tokenizer.json"),
        "{model_id}: the repo has no tokenizer.json"
    );
    if listing.files.iter().any(|f| f == "tokenizer_config.json") {
        (listing.local)("tokenizer_config.json")?;
    }
    (listing.local)("tokenizer.json")
}

/// Downloads (or finds in the cache) `file` of hub model `model_id`; returns its path in the cache.
///
/// # Errors
/// When neither the hub nor the cache has the repo, or the repo has no such file.
pub fn model_file(model_id: &str, file: &str) -> anyhow::Result<PathBuf> {
    let listing = list(model_id, RepoType::Model)?;
    anyhow::ensure!(
        listing.files.iter().any(|f| f == file),
        "{model_id}: the repo has no {file}"
    );
    (listing.local)(file)
}

/// Downloads (or finds in the cache) a hub model's checkpoint: `config.json`, its safetensors weights
/// (every `*.safetensors` and the index of shards, if any) and its tokenizer files; returns the cached
/// snapshot directory that holds them.
///
/// # Errors
/// When neither the hub nor the cache has the repo, or the repo has no `config.json` or no safetensors.
pub fn model_checkpoint(model_id: &str) -> anyhow::Result<PathBuf> {
    let listing = list(model_id, RepoType::Model)?;
    let wanted: Vec<&String> = listing
        .files
        .iter()
        .filter(|f| {
            !f.contains('/')
                && (f.ends_with(".safetensors")
                    || *f == "config.json"
                    || *f == "model.safetensors.index.json"
                    || TOKENIZER_FILES.contains(&f.as_str()))
        })
        .collect();
    anyhow::ensure!(
        wanted.iter().any(|f| *f == "config.json")
            && wanted.iter().any(|f| f.ends_with(".safetensors")),
        "{model_id}: the repo has no config.json and safetensors weights"
    );
    let mut dir = PathBuf::new();
    for file in wanted {
        let path = (listing.local)(file)?;
        dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    Ok(dir)
}

/// The tokenizer files a Hugging Face export carries: `tokenizer.json` first, then those a repo may have.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
];

/// Downloads (or finds in the cache) every file of [`TOKENIZER_FILES`] that hub model `model_id` has,
/// and returns the directory that holds them (the cached snapshot).
///
/// # Errors
/// When neither the hub nor the cache has the repo, or the repo has none of those files.
pub fn tokenizer_dir(model_id: &str) -> anyhow::Result<PathBuf> {
    let listing = list(model_id, RepoType::Model)?;
    let mut dir = None;
    for file in TOKENIZER_FILES {
        if listing.files.iter().any(|f| f == file) {
            let path = (listing.local)(file)?;
            dir.get_or_insert_with(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
        }
    }
    dir.with_context(|| {
        format!(
            "{model_id}: the repo has none of the tokenizer files ({})",
            TOKENIZER_FILES.join(", ")
        )
    })
}

/// Chooses the files of config `name` and `split` among `files` (repo-relative paths), in natural order.
pub fn select_files(
    files: &[String],
    readme: Option<&str>,
    name: Option<&str>,
    split: &str,
) -> anyhow::Result<Vec<String>> {
    let configs = match readme {
        Some(text) => front_matter_configs(text)?,
        None => Vec::new(),
    };
    let patterns: Vec<String> = if configs.is_empty() {
        anyhow::ensure!(
            name.is_none_or(|n| n == "default"),
            "no configs are declared, so --name {:?} names nothing",
            name.unwrap_or_default()
        );
        vec![
            format!("data/{split}-*"),
            format!("data/{split}_*"),
            format!("{split}-*"),
            format!("{split}/**/*"),
            format!("data/{split}/**/*"),
        ]
    } else {
        let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        let config = match name {
            Some(name) => configs
                .iter()
                .find(|c| c.name == name)
                .with_context(|| format!("no config {name:?}; the configs are {names:?}"))?,
            None => configs
                .iter()
                .find(|c| c.is_default)
                .or_else(|| configs.iter().find(|c| c.name == "default"))
                .or_else(|| {
                    if configs.len() == 1 {
                        configs.first()
                    } else {
                        None
                    }
                })
                .with_context(|| {
                    format!("several configs and no default: choose one with --name ({names:?})")
                })?,
        };
        let patterns: Vec<String> = config
            .data_files
            .iter()
            .filter(|(s, _)| s == split)
            .map(|(_, p)| p.clone())
            .collect();
        let splits: Vec<&str> = config.data_files.iter().map(|(s, _)| s.as_str()).collect();
        anyhow::ensure!(
            !patterns.is_empty(),
            "config {:?} has no split {split:?}; its splits are {splits:?}",
            config.name
        );
        patterns
    };
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let compiled: Vec<glob::Pattern> = patterns
        .iter()
        .map(|p| glob::Pattern::new(p).with_context(|| format!("bad data_files pattern {p:?}")))
        .collect::<anyhow::Result<_>>()?;
    let mut selected: Vec<String> = files
        .iter()
        .filter(|f| {
            SourceFormat::of(Path::new(f)).is_some()
                && compiled.iter().any(|p| p.matches_with(f, options))
        })
        .cloned()
        .collect();
    selected.sort_by(|a, b| natural_cmp(a, b));
    anyhow::ensure!(
        !selected.is_empty(),
        "no readable file matches {patterns:?} for split {split:?}"
    );
    Ok(selected)
}

/// One entry of the README's `configs:` list.
#[derive(Debug, PartialEq, Eq)]
struct ConfigEntry {
    name: String,
    is_default: bool,
    /// `(split, glob pattern)` pairs.
    data_files: Vec<(String, String)>,
}

/// The `configs:` of a dataset card's YAML front matter (between the leading `---` lines).
fn front_matter_configs(readme: &str) -> anyhow::Result<Vec<ConfigEntry>> {
    let Some(rest) = readme
        .strip_prefix("---\n")
        .or_else(|| readme.strip_prefix("---\r\n"))
    else {
        return Ok(Vec::new());
    };
    let Some(end) = rest.find("\n---") else {
        return Ok(Vec::new());
    };
    let docs = YamlLoader::load_from_str(&rest[..end]).context("README.md: YAML front matter")?;
    let Some(configs) = docs.first().and_then(|d| d["configs"].as_vec()) else {
        return Ok(Vec::new());
    };
    let strings = |y: &Yaml| -> Vec<String> {
        match y {
            Yaml::String(s) => vec![s.clone()],
            Yaml::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut entries = Vec::new();
    for config in configs {
        let name = config["config_name"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let mut data_files = Vec::new();
        match &config["data_files"] {
            Yaml::Array(items) if items.iter().all(|i| i.as_hash().is_some()) => {
                for item in items {
                    let split = item["split"].as_str().unwrap_or("train").to_owned();
                    data_files.extend(
                        strings(&item["path"])
                            .into_iter()
                            .map(|p| (split.clone(), p)),
                    );
                }
            }
            Yaml::Hash(map) => {
                for (split, paths) in map {
                    let split = split.as_str().unwrap_or("train").to_owned();
                    data_files.extend(strings(paths).into_iter().map(|p| (split.clone(), p)));
                }
            }
            other => data_files.extend(strings(other).into_iter().map(|p| ("train".to_owned(), p))),
        }
        entries.push(ConfigEntry {
            name,
            is_default: config["default"].as_bool().unwrap_or(false),
            data_files,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = "---\nlicense: odc-by\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*/*\n- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n- config_name: CC-MAIN-2024-10\n  data_files:\n    train: data/CC-MAIN-2024-10/*\n---\n# FineWeb-Edu\n";

    fn files() -> Vec<String> {
        [
            "README.md",
            "data/CC-MAIN-2024-10/train-00000.parquet",
            "data/CC-MAIN-2024-18/train-00000.parquet",
            "sample/10BT/000_00000.parquet",
            "sample/10BT/001_00000.parquet",
            "sample/100BT/000.parquet",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    #[test]
    fn configs_pick_files_like_datasets() {
        assert_eq!(
            select_files(&files(), Some(CARD), Some("sample-10BT"), "train").unwrap(),
            [
                "sample/10BT/000_00000.parquet",
                "sample/10BT/001_00000.parquet"
            ]
        );
        assert_eq!(
            select_files(&files(), Some(CARD), None, "train")
                .unwrap()
                .len(),
            2,
            "default: data/*/*"
        );
        assert_eq!(
            select_files(&files(), Some(CARD), Some("CC-MAIN-2024-10"), "train").unwrap(),
            ["data/CC-MAIN-2024-10/train-00000.parquet"]
        );
        let err = select_files(&files(), Some(CARD), Some("sample-1T"), "train").unwrap_err();
        assert!(err.to_string().contains("no config \"sample-1T\""), "{err}");
        let err = select_files(&files(), Some(CARD), Some("sample-10BT"), "test").unwrap_err();
        assert!(err.to_string().contains("has no split \"test\""), "{err}");
    }

    #[test]
    fn without_configs_the_default_layout_applies() {
        let files: Vec<String> = [
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/test-00000-of-00001.parquet",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(select_files(&files, None, None, "train").unwrap().len(), 2);
        assert_eq!(
            select_files(&files, Some("# no front matter"), None, "test")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn aliases_resolve_and_paths_do_not() {
        assert_eq!(
            hub_id("fineweb-edu").unwrap().as_deref(),
            Some("HuggingFaceFW/fineweb-edu")
        );
        assert_eq!(
            hub_id("HuggingFaceFW/fineweb").unwrap().as_deref(),
            Some("HuggingFaceFW/fineweb")
        );
        assert_eq!(hub_id("./data/x").unwrap(), None);
        assert_eq!(hub_id("a/b/c").unwrap(), None);
        assert_eq!(
            model_id("gpt2").unwrap().as_deref(),
            Some("openai-community/gpt2")
        );
        assert_eq!(
            hub_id("gpt2").unwrap(),
            None,
            "a tokenizer's name, not a dataset's"
        );
        assert_eq!(model_id("fineweb-edu").unwrap(), None);
        assert_eq!(
            default_tokenizer().unwrap(),
            "fla-hub/transformer-1.3B-100B"
        );
    }
}
