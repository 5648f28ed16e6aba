//! A job's raw-text dataset through flame-prep's own code: the dataset resolved to files and the
//! tokenizer loaded exactly as `flame-prep --dataset … --tokenizer …` does ([`prep_config`]: the spec's
//! keys become flame-prep's flags), its files read by flame-prep's readers ([`PrepFiles`], records by
//! position) and its documents encoded by flame-prep's encoder (the same ids as `flame-prep`'s output).
//! A streamed dataset's hub and object-store files are listed, not downloaded ([`streaming_config`]), and
//! fetched into the server's [`FileCache`] as the stream reaches them, the next one ahead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use flame_preprocess::cli::Cli;
use flame_preprocess::config::Config;
use flame_preprocess::progress::LiveProgress;
use flame_preprocess::source::{DocumentReader, InputFile, open_reader};
use flame_preprocess::tokenize::TextEncoder;

use crate::file_cache::{FileCache, Held};
use crate::metrics::{Metrics, Preparation};
use crate::online::{Encode, RawFiles, RawSource, RecordReader, SourceError};
use crate::spec::{DatasetSpec, JobSpec};

/// A raw dataset prepared once into `cache` (a `streaming = false` job): flame-prep's run into
/// `cache/prepared/KEY`, KEY naming the source, the tokenizer and the options, so every job that names
/// them shares one preparation. A lock file makes other jobs, and other servers sharing the cache, wait
/// for a preparation under way; a preparation cut short (a kill -9, a restart) resumes from flame-prep's
/// journal. Returns the output directory.
///
/// # Errors
/// flame-prep's errors (no such dataset, a bad record, ...), or the cache cannot be written.
pub fn prepare(
    spec: &JobSpec,
    dataset: &DatasetSpec,
    cache: &Path,
    metrics: &Metrics,
) -> anyhow::Result<PathBuf> {
    let dir = preparation_dir(spec, dataset, cache);
    let key = dir.to_string_lossy().into_owned();
    // Shown from the start: waiting for another server's preparation of it is waiting too.
    let live = Arc::new(LiveProgress::default());
    let read = Arc::clone(&live);
    metrics.preparing_started(
        &key,
        dataset.label(),
        Box::new(move || {
            let now = read.snapshot();
            Preparation {
                input_bytes: now.input_bytes,
                total_bytes: now.total_bytes,
                documents: now.num_documents,
                tokens: now.num_tokens,
            }
        }),
    );
    let prepared = prepare_locked(spec, dataset, &dir, live);
    metrics.prepared(&key);
    prepared
}

/// [`prepare`] into `dir`, under its lock, publishing the run's progress into `live`.
fn prepare_locked(
    spec: &JobSpec,
    dataset: &DatasetSpec,
    dir: &Path,
    live: Arc<LiveProgress>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: create", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".lock"))
        .with_context(|| format!("{}: create the lock", dir.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("{}: lock", dir.display()))?;
    let mut config = prep_config(spec, dataset, dir)?;
    if !config.output_dir.join("manifest.json").is_file() {
        tracing::info!(
            dataset = dataset.label(),
            output = %config.output_dir.display(),
            files = config.inputs.len(),
            "Preparing a raw dataset (flame-prep); the job's clients wait."
        );
        config.live_progress = Some(live);
        flame_preprocess::run::run(&config, true)?;
        tracing::info!(dataset = dataset.label(), "Prepared.");
    }
    Ok(config.output_dir)
}

/// Where [`prepare`] puts raw dataset `dataset` of `spec` in `cache` (and its lock file, `.lock`).
pub fn preparation_dir(spec: &JobSpec, dataset: &DatasetSpec, cache: &Path) -> PathBuf {
    cache.join("prepared").join(preparation_key(spec, dataset))
}

/// SHA-256 of the job's `tokenizer.json` (resolved as `flame-prep --tokenizer` resolves it), as a
/// manifest's `tokenizer.sha256` records it.
///
/// # Errors
/// The tokenizer cannot be found or read.
pub fn tokenizer_sha256(spec: &JobSpec) -> anyhow::Result<String> {
    use sha2::Digest;
    let given = spec.tokenizer.as_deref().map(Path::new);
    let resolved = flame_preprocess::config::resolve_tokenizer(given, None)?;
    let file = if resolved.is_dir() {
        resolved.join("tokenizer.json")
    } else {
        resolved
    };
    let bytes = std::fs::read(&file).with_context(|| format!("{}: read", file.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// What names a preparation: the raw dataset's keys and the job's tokenizer options.
fn preparation_key(spec: &JobSpec, dataset: &DatasetSpec) -> String {
    use sha2::Digest;
    let identity = serde_json::json!({
        "dataset": dataset.dataset,
        "name": dataset.name,
        "split": dataset.split,
        "text_key": dataset.text_key,
        "tokenizer": spec.tokenizer,
        "bos": spec.bos,
        "append_eod": spec.append_eod,
    });
    hex::encode(&sha2::Sha256::digest(identity.to_string().as_bytes())[..16])
}

/// flame-prep's configuration for raw dataset `dataset` of `spec`, its output (when prepared) under
/// `output`: the spec's keys passed as flame-prep's flags, so that every rule of `--dataset`,
/// `--tokenizer`, `--name`, `--split`, `--text-key`, `--bos` and `--append-eod` is flame-prep's.
///
/// # Errors
/// What flame-prep says of these flags: no such dataset or tokenizer, a bad name, ...
///
/// # Panics
/// If `dataset` is not raw text (the spec's validation makes sure it is).
pub fn prep_config(spec: &JobSpec, dataset: &DatasetSpec, output: &Path) -> anyhow::Result<Config> {
    let raw = dataset.dataset.as_deref().expect("a raw dataset");
    Config::from_args(&prep_args(spec, dataset, output)?)
        .with_context(|| format!("dataset {raw:?}"))
}

/// [`prep_config`] for a streaming job: hub and object-store files listed, not downloaded
/// ([`Config::listed`], hub listings kept under `listings`), each fetched when the stream reaches it.
///
/// # Errors
/// As [`prep_config`].
///
/// # Panics
/// If `dataset` is not raw text.
pub fn streaming_config(
    spec: &JobSpec,
    dataset: &DatasetSpec,
    listings: &Path,
) -> anyhow::Result<Config> {
    let raw = dataset.dataset.as_deref().expect("a raw dataset");
    Config::listed(&prep_args(spec, dataset, listings)?, listings)
        .with_context(|| format!("dataset {raw:?}"))
}

/// flame-prep's flags for `dataset` of `spec`, its output under `output`.
fn prep_args(
    spec: &JobSpec,
    dataset: &DatasetSpec,
    output: &Path,
) -> anyhow::Result<flame_preprocess::cli::TokenizeArgs> {
    let raw = dataset.dataset.as_deref().expect("a raw dataset");
    let mut args: Vec<String> = vec!["flame-prep".into(), "--dataset".into(), raw.into()];
    let mut flag = |name: &str, value: Option<&str>| {
        if let Some(value) = value {
            args.extend([format!("--{name}"), value.to_owned()]);
        }
    };
    flag("tokenizer", spec.tokenizer.as_deref());
    flag("name", dataset.name.as_deref());
    flag("split", dataset.split.as_deref());
    flag("text-key", dataset.text_key.as_deref());
    flag("bos", spec.bos.as_deref());
    flag("output", output.to_str());
    if spec.append_eod {
        args.push("--append-eod".into());
    }
    let cli = Cli::try_parse_from(&args).with_context(|| format!("dataset {raw:?}"))?;
    Ok(cli.tokenize)
}

/// The raw dataset that `config` names, for a streaming job: its files (the remote ones fetched into
/// `cache`) and the job's encoder.
///
/// # Errors
/// The tokenizer cannot be loaded.
pub fn raw_source(
    config: &Config,
    cache: &Arc<FileCache>,
    cursors: Option<&Path>,
) -> anyhow::Result<Arc<RawSource>> {
    let encoder = TextEncoder::load(
        &config.tokenizer,
        config.bos,
        config.append_eod,
        config.parse_special_tokens,
    )
    .with_context(|| format!("tokenizer {}", config.tokenizer.display()))?;
    Ok(Arc::new(RawSource {
        names: config.inputs.iter().map(|f| f.uri.clone()).collect(),
        files: Box::new(PrepFiles {
            inputs: config.inputs.clone(),
            text_key: config.text_key.clone(),
            cache: Arc::clone(cache),
        }),
        encoder: Box::new(PrepEncoder(encoder)),
        // Named by the files too: cursors of another list of files would be another stream's.
        cursor_log: cursors.map(|dir| {
            use sha2::Digest;
            let mut names = sha2::Sha256::new();
            for input in &config.inputs {
                names.update(input.uri.as_bytes());
                names.update([0]);
            }
            dir.join(format!("{}.jsonl", hex::encode(&names.finalize()[..8])))
        }),
    }))
}

/// A raw dataset's files, read by flame-prep's readers; remote ones through the server's [`FileCache`].
#[derive(Debug)]
pub struct PrepFiles {
    inputs: Vec<InputFile>,
    text_key: Option<String>,
    cache: Arc<FileCache>,
}

/// Records per read.
const RECORDS_PER_READ: usize = 256;

impl RawFiles for PrepFiles {
    fn num_files(&self) -> usize {
        self.inputs.len()
    }

    fn open(&self, file: usize, start: u64) -> Result<Box<dyn RecordReader>, SourceError> {
        let input = &self.inputs[file];
        let failed = |position: String, e: &anyhow::Error| SourceError {
            path: input.uri.clone(),
            position,
            reason: format!("{e:#}"),
        };
        let held = self
            .cache
            .hold(input)
            .map_err(|e| failed("file".into(), &e))?;
        let reader = match &held {
            Some(held) => {
                let local = InputFile {
                    path: held.path().to_owned(),
                    remote: None,
                    ..input.clone()
                };
                open_reader(&local, file, self.text_key.as_deref())
            }
            None => open_reader(input, file, self.text_key.as_deref()),
        }
        .map_err(|e| failed("file".into(), &e))?;
        let mut reader = PrepReader {
            reader,
            uri: input.uri.clone(),
            records: Vec::new(),
            _held: held,
        };
        // Records before `start` are read and dropped: a reader is sequential (parquet, compressed JSON).
        let mut skipped = 0;
        let mut texts = Vec::new();
        while skipped < start {
            texts.clear();
            let want = usize::try_from(start - skipped)
                .map_or(RECORDS_PER_READ, |n| n.min(RECORDS_PER_READ));
            let has_more = reader.read(&mut texts, want)?;
            skipped += texts.len() as u64;
            if !has_more && skipped < start {
                return Err(SourceError {
                    path: input.uri.clone(),
                    position: format!("record {start}"),
                    reason: format!("the file has {skipped} records"),
                });
            }
        }
        Ok(Box::new(reader))
    }

    fn prefetch(&self, file: usize) {
        if let Some(input) = self.inputs.get(file) {
            self.cache.prefetch(input);
        }
    }
}

/// One file's reader.
struct PrepReader {
    reader: Box<dyn DocumentReader>,
    uri: String,
    records: Vec<flame_preprocess::source::Record>,
    /// Keeps a cached file on disk while it is read (dropped after `reader`, which may map it).
    _held: Option<Held>,
}

impl RecordReader for PrepReader {
    fn read(&mut self, out: &mut Vec<String>, max: usize) -> Result<bool, SourceError> {
        self.records.clear();
        let has_more = self
            .reader
            .read_batch(&mut self.records, max, usize::MAX)
            .map_err(|e| SourceError {
                path: self.uri.clone(),
                position: "file".into(),
                reason: format!("{e:#}"),
            })?;
        for record in self.records.drain(..) {
            match record {
                Ok(document) => out.push(document.text.into()),
                Err(bad) => {
                    return Err(SourceError {
                        path: self.uri.clone(),
                        position: bad.position,
                        reason: bad.reason,
                    });
                }
            }
        }
        Ok(has_more)
    }
}

/// flame-prep's encoder, with the job's BOS/EOS policy.
struct PrepEncoder(TextEncoder);

impl Encode for PrepEncoder {
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
        self.0.encode(text, out)
    }
}
