//! The validated configuration of a tokenizing run, built from the command line.

use std::path::{Path, PathBuf};

use anyhow::Context;

use flame_formats::TailPolicy;
use serde_json::{Map, Value, json};

use crate::cli::{Tail, TokenizeArgs};
use crate::sample;
use crate::source::{InputFile, hub, remote, resolve_inputs};
use crate::tokenize::BosPolicy;

/// Everything a run needs, checked.
#[derive(Clone, Debug)]
#[allow(clippy::struct_excessive_bools)] // independent on/off switches from the command line
pub struct Config {
    /// The dataset as the user named it.
    pub dataset: String,
    /// Its input files, in order.
    pub inputs: Vec<InputFile>,
    /// The output directory: `OUTPUT/DATASET/NAME/SPLIT`.
    pub output_dir: PathBuf,
    /// The tokenizer file or directory.
    pub tokenizer: PathBuf,
    /// Text column or key.
    pub text_key: Option<String>,
    /// BOS policy.
    pub bos: BosPolicy,
    /// Append EOS to every document.
    pub append_eod: bool,
    /// Parse special-token strings in text.
    pub parse_special_tokens: bool,
    /// Packed windows, if asked for: `(seq_len, tail, explicit pad id)`.
    pub packing: Option<(u32, Tail, Option<u32>)>,
    /// Tokens per shard.
    pub shard_tokens: u64,
    /// Tokenizer threads.
    pub workers: usize,
    /// Skip bad records instead of failing.
    pub skip_bad_records: bool,
    /// Replace a complete output.
    pub overwrite: bool,
    /// JSON summary on stdout.
    pub json: bool,
    /// `--shuffle --seed`: the seed of the global document permutation.
    pub shuffle_seed: Option<u64>,
    /// This run is part `index` of `count` (`--shard-index`, `--num-shards`).
    pub partial: Option<Partial>,
    /// Where the run's progress is published for another thread (none from the command line).
    pub live_progress: Option<std::sync::Arc<crate::progress::LiveProgress>>,
}

/// One part of a job split over machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partial {
    /// 0-based part.
    pub index: u32,
    /// Number of parts.
    pub count: u32,
}

impl Partial {
    /// The directory name of this part inside the job's output directory.
    pub fn dir_name(self) -> String {
        format!("part-{:05}-of-{:05}", self.index, self.count)
    }
}

/// Contiguous slices of `sizes` for `count` parts, balanced by bytes: file `f` belongs to the part its first
/// byte falls in. Deterministic, so every machine computes the same split.
pub fn split_by_size(sizes: &[u64], count: u32) -> Vec<std::ops::Range<usize>> {
    let total: u128 = sizes.iter().map(|&s| u128::from(s)).sum::<u128>().max(1);
    let mut owners = Vec::with_capacity(sizes.len());
    let mut start = 0u128;
    for &size in sizes {
        owners.push(u32::try_from(start * u128::from(count) / total).expect("below count"));
        start += u128::from(size);
    }
    (0..count)
        .map(|part| owners.partition_point(|&o| o < part)..owners.partition_point(|&o| o <= part))
        .collect()
}

impl Config {
    /// Validates `args`: resolves the dataset to files (downloading remote ones) and picks the output
    /// directory.
    pub fn from_args(args: &TokenizeArgs) -> anyhow::Result<Self> {
        Self::resolved(args, None)
    }

    /// [`Config::from_args`], but hub and object-store files are listed, not downloaded: each such input
    /// has its [`crate::source::RemoteFile`] (a streaming server fetches them as it goes). Hub listings
    /// are kept under `listings`, for offline use.
    pub fn listed(args: &TokenizeArgs, listings: &Path) -> anyhow::Result<Self> {
        Self::resolved(args, Some(listings))
    }

    fn resolved(args: &TokenizeArgs, listings: Option<&Path>) -> anyhow::Result<Self> {
        let dataset = args.dataset.clone().expect("clap requires --dataset");
        let (inputs, default_tokenizer, dataset_name) = resolve_dataset(&dataset, args, listings)?;
        let tokenizer = resolve_tokenizer(args.tokenizer.as_deref(), default_tokenizer)?;
        if let Some(n) = args.context_length {
            anyhow::ensure!(
                n > 0 && i32::try_from(n).is_ok(),
                "--context_length must be in 1..=2147483647, got {n}"
            );
        }
        anyhow::ensure!(
            args.context_length.is_some() || args.tail == Tail::Drop,
            "--tail pad needs --context_length"
        );
        let name = args.name.clone().unwrap_or_else(|| "default".into());
        for (flag, value) in [("--name", &name), ("--split", &args.split)] {
            anyhow::ensure!(
                is_path_component(value),
                "{flag} {value:?} must be a plain name (it becomes a directory)"
            );
        }
        let partial = match (args.num_shards, args.shard_index) {
            (Some(count), Some(index)) => {
                anyhow::ensure!(
                    count > 0 && index < count,
                    "--shard-index {index} must be below --num-shards {count}"
                );
                Some(Partial { index, count })
            }
            _ => None,
        };
        let mut inputs = inputs;
        let mut output_dir = args
            .output
            .join(&dataset_name)
            .join(&name)
            .join(&args.split);
        if let Some(partial) = partial {
            let sizes: Vec<u64> = inputs.iter().map(|f| f.num_bytes).collect();
            let range = split_by_size(&sizes, partial.count)[partial.index as usize].clone();
            inputs = inputs[range].to_vec();
            output_dir = output_dir.join(partial.dir_name());
        }
        let workers = args.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        anyhow::ensure!(workers > 0, "--workers must be at least 1");
        Ok(Self {
            output_dir,
            dataset,
            inputs,
            tokenizer,
            text_key: args.text_key.clone(),
            bos: args.bos,
            append_eod: args.append_eod,
            parse_special_tokens: args.parse_special_tokens,
            packing: args.context_length.map(|n| (n, args.tail, args.pad_id)),
            shard_tokens: args.shard_tokens,
            workers,
            skip_bad_records: args.skip_bad_records,
            overwrite: args.overwrite,
            json: args.json,
            shuffle_seed: args.shuffle.then_some(args.seed),
            partial,
            live_progress: None,
        })
    }

    /// The tail policy of packed output, given the tokenizer's EOS for the default pad id.
    pub fn tail_policy(&self, eos_id: Option<u32>) -> Option<(u32, TailPolicy)> {
        self.packing.map(|(seq_len, tail, pad_id)| {
            let policy = match tail {
                Tail::Drop => TailPolicy::Drop,
                Tail::Pad => TailPolicy::Pad {
                    pad_id: pad_id.or(eos_id).unwrap_or(0),
                },
            };
            (seq_len, policy)
        })
    }

    /// The parameters recorded in the manifest: those that change the output bytes (not `workers`, and
    /// not the split over machines, so that a merged job has the manifest of a single-machine run).
    pub fn manifest_parameters(&self, eos_id: Option<u32>) -> Map<String, Value> {
        let value = json!({
            "dataset": self.dataset,
            "text_key": self.text_key,
            "bos": self.bos,
            "append_eod": self.append_eod,
            "parse_special_tokens": self.parse_special_tokens,
            "context_length": self.packing.map(|p| p.0),
            "tail": self.tail_policy(eos_id).map(|t| t.1),
            "shard_tokens": self.shard_tokens,
            "skip_bad_records": self.skip_bad_records,
            "shuffle_seed": self.shuffle_seed,
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("an object literal"),
        }
    }
}

/// The input files (remote ones listed only, with `listings`), the tokenizer that goes with the dataset if
/// any (the bundled sample's), and the dataset's name in the output path.
fn resolve_dataset(
    dataset: &str,
    args: &TokenizeArgs,
    listings: Option<&Path>,
) -> anyhow::Result<(Vec<InputFile>, Option<PathBuf>, String)> {
    let is_local = !remote::is_url(dataset)
        && (dataset.contains(['*', '?', '[']) || Path::new(dataset).exists());
    if dataset == "sample" {
        let sample = sample::materialize()?;
        Ok((
            resolve_inputs(&sample.dataset_dir.to_string_lossy(), &args.split)?,
            Some(sample.tokenizer),
            "sample".to_owned(),
        ))
    } else if is_local {
        Ok((
            resolve_inputs(dataset, &args.split)?,
            None,
            dataset_name(dataset),
        ))
    } else if remote::is_url(dataset) {
        let inputs = match listings {
            Some(_) => remote::list_url(dataset, &args.split)?,
            None => remote::resolve_url(dataset, &args.split, &sample::cache_dir()?)?,
        };
        Ok((inputs, None, dataset_name_of_url(dataset)))
    } else if let Some(repo) = hub::hub_id(dataset)? {
        let short = if dataset.contains('/') {
            repo.rsplit('/').next().unwrap_or(&repo).to_owned()
        } else {
            dataset.to_owned()
        };
        let inputs = match listings {
            Some(listings) => hub::list_hub(&repo, args.name.as_deref(), &args.split, listings)?,
            None => hub::resolve_hub(&repo, args.name.as_deref(), &args.split)?,
        };
        Ok((inputs, None, short))
    } else {
        anyhow::bail!(
            "{dataset}: no such file or directory, and not a Hugging Face hub dataset id (owner/name) or alias (configs/datasets.toml)"
        );
    }
}

/// `--tokenizer` as a local path or a hub model id; else the dataset's own; else flame's default from the hub.
/// The tokenizer file or directory `--tokenizer` names (`given`: a path, else a hub model id), else the
/// dataset's own, else flame's default from the hub.
///
/// # Errors
/// No such file and not a hub id, or the hub cannot give it.
pub fn resolve_tokenizer(
    given: Option<&Path>,
    dataset_default: Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    match (given, dataset_default) {
        (Some(path), _) if path.exists() => Ok(path.to_path_buf()),
        (Some(id), _) => match hub::model_id(&id.to_string_lossy())? {
            Some(repo) => hub::resolve_tokenizer(&repo),
            None => anyhow::bail!(
                "{}: no such tokenizer file or directory, and not a hub model id",
                id.display()
            ),
        },
        (None, Some(path)) => Ok(path),
        (None, None) => hub::resolve_tokenizer(&hub::default_tokenizer()?)
            .context("loading flame's default tokenizer from the hub (or pass --tokenizer PATH)"),
    }
}

/// A directory-friendly name for a URL: the last path component before any glob, else the bucket.
fn dataset_name_of_url(url: &str) -> String {
    let without_glob = url.split(['*', '?', '[']).next().unwrap_or(url);
    let rest = without_glob
        .split_once("://")
        .map_or(without_glob, |(_, r)| r)
        .trim_end_matches('/');
    let last = rest.rsplit('/').next().unwrap_or(rest);
    let last = last.split('.').next().unwrap_or(last);
    if is_path_component(last) {
        last.to_owned()
    } else {
        "dataset".into()
    }
}

/// A directory-friendly name for a dataset path: its last component without extension.
fn dataset_name(dataset: &str) -> String {
    let path = Path::new(dataset.trim_end_matches('/'));
    let base = if dataset.contains(['*', '?', '[']) {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    let stem = if base.is_file() {
        base.file_stem()
    } else {
        base.file_name()
    };
    let name: String = stem
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.split('.').next().unwrap_or_default().to_owned();
    if is_path_component(&name) {
        name
    } else {
        "dataset".into()
    }
}

fn is_path_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_contiguous_balanced_and_cover_everything() {
        let sizes = [100, 100, 100, 100, 400, 50, 50, 100];
        let parts = split_by_size(&sizes, 3);
        assert_eq!(parts, vec![0..4, 4..5, 5..8]);
        for count in 1..12 {
            let parts = split_by_size(&sizes, count);
            assert_eq!(parts.len(), count as usize);
            assert_eq!(parts.first().unwrap().start, 0);
            assert_eq!(parts.last().unwrap().end, sizes.len());
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        }
        assert_eq!(split_by_size(&[], 2), vec![0..0, 0..0]);
    }
}
