//! The validated configuration of a tokenizing run, built from the command line.

use std::path::{Path, PathBuf};

use flame_formats::TailPolicy;
use serde_json::{Map, Value, json};

use crate::cli::{Tail, TokenizeArgs};
use crate::sample;
use crate::source::{InputFile, resolve_inputs};
use crate::tokenize::BosPolicy;

/// Everything a run needs, checked.
#[derive(Debug)]
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
}

impl Config {
    /// Validates `args`: resolves the dataset to files and picks the output directory.
    pub fn from_args(args: &TokenizeArgs) -> anyhow::Result<Self> {
        let dataset = args.dataset.clone().expect("clap requires --dataset");
        let (inputs, default_tokenizer, dataset_name) = if dataset == "sample" {
            let sample = sample::materialize()?;
            (
                resolve_inputs(&sample.dataset_dir.to_string_lossy(), &args.split)?,
                Some(sample.tokenizer),
                "sample".to_owned(),
            )
        } else {
            (
                resolve_inputs(&dataset, &args.split)?,
                None,
                dataset_name(&dataset),
            )
        };
        let tokenizer = match (&args.tokenizer, default_tokenizer) {
            (Some(path), _) => path.clone(),
            (None, Some(path)) => path,
            (None, None) => anyhow::bail!(
                "--tokenizer PATH is required for {dataset:?}: a tokenizer.json or a directory holding one"
            ),
        };
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
        let workers = args.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        anyhow::ensure!(workers > 0, "--workers must be at least 1");
        Ok(Self {
            output_dir: args
                .output
                .join(&dataset_name)
                .join(&name)
                .join(&args.split),
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

    /// The parameters recorded in the manifest: those that change the output bytes (not `workers`).
    pub fn manifest_parameters(&self) -> Map<String, Value> {
        let value = json!({
            "dataset": self.dataset,
            "text_key": self.text_key,
            "bos": self.bos,
            "append_eod": self.append_eod,
            "parse_special_tokens": self.parse_special_tokens,
            "context_length": self.packing.map(|p| p.0),
            "shard_tokens": self.shard_tokens,
            "skip_bad_records": self.skip_bad_records,
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("an object literal"),
        }
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
