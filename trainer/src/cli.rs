//! flame's flags (`--section.key`, torchtitan's names) and `--job.config_file`, parsed into [`Args`].

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use flame_streamer::server::Endpoint;

use crate::models::{Checkpointing, MixingKernels};
use crate::schedule::DecayType;

/// flame's flags (`--section.key`), plus the data endpoint and its job.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "flame-train",
    version,
    about = "Trains flame's transformer configs from flame-stream.",
    args_override_self = true
)]
#[allow(clippy::struct_excessive_bools)]
pub struct Args {
    /// The model config (flame's `configs/*.json`, or a Llama/Mistral `config.json`); without it, the
    /// `config.json` of `--checkpoint.initial_load_path`.
    #[arg(long = "model.config")]
    pub model_config: Option<PathBuf>,
    /// Tokenizer files copied into the Hugging Face export: a directory, a `tokenizer.json`, or a hub
    /// model id (downloaded into the hub cache). Checked before the first step.
    #[arg(long = "model.tokenizer_path")]
    pub tokenizer_path: Option<PathBuf>,
    /// Peak learning rate.
    #[arg(long = "optimizer.lr", default_value_t = 8e-4)]
    pub lr: f64,
    /// AdamW epsilon.
    #[arg(long = "optimizer.eps", default_value_t = 1e-8)]
    pub eps: f64,
    /// AdamW weight decay.
    #[arg(long = "optimizer.weight_decay", default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Warmup steps.
    #[arg(long = "lr_scheduler.warmup_steps", default_value_t = 200)]
    pub warmup_steps: u64,
    /// Decay shape.
    #[arg(long = "lr_scheduler.decay_type", value_enum, default_value = "linear")]
    pub decay_type: DecayType,
    /// Floor of the decay, as a ratio of the peak.
    #[arg(long = "lr_scheduler.lr_min", default_value_t = 0.0)]
    pub lr_min: f64,
    /// Share of the steps that decay (warmup-stable-decay); all after warmup when absent.
    #[arg(long = "lr_scheduler.decay_ratio")]
    pub decay_ratio: Option<f64>,
    /// Samples per micro-batch on this rank.
    #[arg(long = "training.batch_size", default_value_t = 8)]
    pub batch_size: u32,
    /// Tokens per sample.
    #[arg(long = "training.seq_len", default_value_t = 2048)]
    pub seq_len: u32,
    /// Longest sequence inside a sample (varlen).
    #[arg(long = "training.context_len")]
    pub context_len: Option<u32>,
    /// Attention restarted at every document.
    #[arg(long = "training.varlen", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub varlen: bool,
    /// Activation checkpointing: `none` keeps every activation, `full` recomputes each layer in the
    /// backward pass (for long varlen batches).
    #[arg(
        long = "activation_checkpoint.mode",
        value_enum,
        default_value = "none"
    )]
    pub activation_checkpoint: Checkpointing,
    /// What the linear models' token mixing and every model's loss and residual norms run on: `fla`
    /// (the Triton kernels that tools/setup-kernels.sh compiles ahead of time: fla-core's, and flame's
    /// fused residual norm), `torch` (libtorch ops), `auto` (for the linear models the kernels where
    /// they can run; libtorch for the transformer and GPT-2).
    #[arg(long = "model.kernels", value_enum, default_value = "auto")]
    pub kernels: MixingKernels,
    /// Micro-batches per optimizer step.
    #[arg(long = "training.gradient_accumulation_steps", default_value_t = 1)]
    pub gradient_accumulation_steps: u32,
    /// Optimizer steps.
    #[arg(long = "training.steps")]
    pub steps: u64,
    /// Global gradient-norm clip.
    #[arg(long = "training.max_norm", default_value_t = 1.0)]
    pub max_norm: f64,
    /// Skip the update when the gradient norm is NaN or infinite.
    #[arg(long = "training.skip_nan_inf", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub skip_nan_inf: bool,
    /// Seed of the initial weights.
    #[arg(long = "training.seed", default_value_t = 42)]
    pub seed: i64,
    /// Deterministic algorithms only (torchtitan's `--training.deterministic`): libtorch's deterministic
    /// mode with cuDNN's deterministic algorithms and no benchmarking, `CUBLAS_WORKSPACE_CONFIG=:4096:8`
    /// unless set; an op with no deterministic algorithm is an error naming it.
    #[arg(long = "training.deterministic", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub deterministic: bool,
    /// Write checkpoints (and the Hugging Face export at the end).
    #[arg(long = "checkpoint.enable_checkpoint", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_checkpoint: bool,
    /// The checkpoints' folder under `--job.dump_folder`.
    #[arg(long = "checkpoint.folder", default_value = "checkpoint")]
    pub checkpoint_folder: String,
    /// Start a fresh run (one that resumes no checkpoint) from the weights of this Hugging Face
    /// checkpoint directory (`model.safetensors` or sharded, `transformers` names): continual
    /// pretraining (torchtitan's name).
    #[arg(long = "checkpoint.initial_load_path")]
    pub initial_load_path: Option<PathBuf>,
    /// Write the initial weights as checkpoint `step-0` and stop (torchtitan's seed checkpoint, which
    /// runs of other parallelisms can start from).
    #[arg(long = "checkpoint.create_seed_checkpoint", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub create_seed_checkpoint: bool,
    /// The last step's checkpoint holds the model's weights alone, in `--checkpoint.export_dtype`
    /// (torchtitan's); the others stay whole.
    #[arg(long = "checkpoint.model_weights_only", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub model_weights_only: bool,
    /// The dtype of a weights-only checkpoint.
    #[arg(
        long = "checkpoint.export_dtype",
        value_enum,
        default_value = "float32"
    )]
    pub export_dtype: ExportDtype,
    /// Steps (or seconds, with `--checkpoint.interval_type seconds`) between checkpoints (0: only at
    /// the end).
    #[arg(long = "checkpoint.interval", default_value_t = 500)]
    pub checkpoint_interval: u64,
    /// What `--checkpoint.interval` counts.
    #[arg(long = "checkpoint.interval_type", value_enum, default_value = "steps")]
    pub interval_type: IntervalType,
    /// Checkpoints kept (0: all).
    #[arg(long = "checkpoint.keep_latest_k", default_value_t = 0)]
    pub keep_latest_k: usize,
    /// Resume from this step's checkpoint; -1: the latest.
    #[arg(long = "checkpoint.load_step", allow_hyphen_values = true)]
    pub load_step: Option<i64>,
    /// Profile every `--profiling.profile_freq`-th step with libtorch's profiler (torchtitan's).
    #[arg(long = "profiling.enable_profiling", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_profiling: bool,
    /// Where the traces go under `--job.dump_folder`: `iteration_<step>/rank<rank>_trace.json`.
    #[arg(
        long = "profiling.save_traces_folder",
        default_value = "profile_traces"
    )]
    pub traces_folder: String,
    /// Steps between profiled steps.
    #[arg(long = "profiling.profile_freq", default_value_t = 10)]
    pub profile_freq: u64,
    /// The TensorBoard event files' folder under `--job.dump_folder`.
    #[arg(long = "metrics.save_tb_folder", default_value = "tb")]
    pub tb_folder: String,
    /// Steps between log lines.
    #[arg(long = "metrics.log_freq", default_value_t = 10)]
    pub log_freq: u64,
    /// Where checkpoints, metrics and the export go.
    #[arg(long = "job.dump_folder", default_value = "exp")]
    pub dump_folder: PathBuf,
    /// The flame-stream endpoint (`unix:///path` or `tcp://host:port`); without it, flame-train runs
    /// the data service itself (flame-stream's server, in this process, over shared memory).
    #[arg(long = "data-endpoint")]
    pub data_endpoint: Option<Endpoint>,
    /// The job spec (TOML) to ask for; without it, the job `--training.dataset` and the flags describe.
    #[arg(long = "data-job")]
    pub data_job: Option<PathBuf>,
    /// Raw datasets by name (flame's flag, a comma list): hub ids or aliases, local files, directories
    /// or globs, object-store URLs, tokenized with `--model.tokenizer_path` as they are served.
    #[arg(long = "training.dataset")]
    pub dataset: Option<String>,
    /// Each dataset's hub configuration (a comma list parallel to `--training.dataset`; empty: none).
    #[arg(long = "training.dataset_name")]
    pub dataset_name: Option<String>,
    /// Each dataset's split (a comma list; empty: `train`).
    #[arg(long = "training.dataset_split")]
    pub dataset_split: Option<String>,
    /// Each dataset's subdirectory (a comma list; `datasets.load_dataset`'s `data_dir`).
    #[arg(long = "training.data_dir")]
    pub data_dir: Option<String>,
    /// Each dataset's files (a comma list; with a builder name such as `json` or `parquet` as the
    /// dataset, as `datasets.load_dataset` takes them).
    #[arg(long = "training.data_files")]
    pub data_files: Option<String>,
    /// Each dataset's share (a comma list, required with several datasets): of the tokens here (flame
    /// draws documents with these probabilities).
    #[arg(long = "training.data_probs")]
    pub data_probs: Option<String>,
    /// Tokenize the raw datasets while they are served (flame's streaming); without it they are
    /// prepared once into the data service's cache and then served.
    #[arg(long = "training.streaming", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub streaming: bool,
    /// The token of a flame-stream server started with `--token` (the same variable as the server's).
    #[arg(
        long = "data-token",
        env = "FLAME_STREAM_TOKEN",
        hide_env_values = true
    )]
    pub data_token: Option<String>,
    /// Device: `cpu`, `cuda` (this process's local rank's GPU, as torchrun assigns them) or `cuda:N`;
    /// default: CUDA when present.
    #[arg(long = "training.device")]
    pub device: Option<String>,
    /// Dtype of the gradient all-reduce across ranks: `float32` or `bfloat16`.
    #[arg(
        long = "training.mixed_precision_reduce",
        value_enum,
        default_value = "float32"
    )]
    pub reduce_dtype: ReduceDtype,
    /// Target size of a gradient bucket in MiB (each is all-reduced as soon as the backward pass has
    /// finished it). Larger than DDP's 25: on 2 H200s, 250 gave 1.94× one GPU's tokens/s and 25 gave
    /// 1.88× (each collective's kernels hold SMs while they wait for the other ranks).
    #[arg(long = "training.bucket_cap_mb", default_value_t = 250)]
    pub bucket_cap_mb: u64,
    /// Seconds the ranks wait for each other at the rendezvous (where each proves it holds the job's
    /// secret, `FLAME_RDZV_SECRET`, else torchrun's `TORCHELASTIC_RUN_ID` or Slurm's `SLURM_JOB_ID`).
    #[arg(long = "comm.init_timeout_seconds", default_value_t = 300)]
    pub init_timeout_seconds: u64,
    /// Seconds each step after a run's first may take on several ranks, as torchtitan's (its first
    /// step has `--comm.init_timeout_seconds`): a rank whose step outlives it says so and aborts, as
    /// torch's NCCL watchdog tears a process down (`dist/watchdog.rs`).
    #[arg(long = "comm.train_timeout_seconds", default_value_t = 100)]
    pub train_timeout_seconds: u64,
    /// Start this many local ranks (one per GPU) and wait for them, as `torchrun --nproc-per-node`
    /// (default: `NGPU`, as flame's `train.sh` reads it, else 1).
    #[arg(long = "nproc-per-node", env = "NGPU", default_value_t = 1)]
    pub nproc_per_node: u32,
    /// A TOML file of the same keys (`[training]` `steps = 100`, …); flags given on the command line win.
    #[arg(long = "job.config_file")]
    pub config_file: Option<PathBuf>,
    /// Print the parsed arguments before starting.
    #[arg(long = "job.print_args", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub print_args: bool,
}

impl Args {
    /// These arguments with `--model.config` and `--checkpoint.initial_load_path` given as hub model ids
    /// (flame's `fla-hub/transformer-1.3B-100B`) replaced by their files in the hub cache: the repo's
    /// `config.json`, and its `config.json`, safetensors weights and tokenizer files (downloaded once;
    /// `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` honoured, as flame-prep's). A path
    /// that exists is kept as it is.
    ///
    /// # Errors
    /// When a path that does not exist is not a hub model the hub or the cache has.
    pub fn resolve_hub(&self) -> anyhow::Result<Self> {
        use flame_preprocess::source::hub::{model_checkpoint, model_file};
        let mut args = self.clone();
        if let Some(path) = &self.model_config {
            let fetch = |id: &str| model_file(id, "config.json");
            args.model_config = Some(hub_or_path(path, "--model.config", fetch)?);
        }
        if let Some(path) = &self.initial_load_path {
            let resolved = hub_or_path(path, "--checkpoint.initial_load_path", model_checkpoint)?;
            args.initial_load_path = Some(resolved);
        }
        Ok(args)
    }

    /// The model config's path: `--model.config`, else `--checkpoint.initial_load_path`'s
    /// `config.json`.
    ///
    /// # Errors
    /// When neither is given.
    pub fn model_config_path(&self) -> anyhow::Result<PathBuf> {
        self.model_config
            .clone()
            .or_else(|| self.initial_load_path.as_ref().map(|d| d.join("config.json")))
            .context("--model.config is needed (or --checkpoint.initial_load_path, whose config.json is used)")
    }

    /// Parses the command line, with the keys of `--job.config_file` (if any) read first, so that flags
    /// on the command line override them. flame's flags that flame-train does not have under its own
    /// name, on either, are resolved by [`crate::flame_flags`]: renamed, accepted with a note on stderr,
    /// or refused; a key neither knows is an error.
    pub fn parse_with_config_file(argv: Vec<String>) -> anyhow::Result<Self> {
        let mut argv = argv.into_iter();
        let program = argv.next().unwrap_or_else(|| "flame-train".into());
        let rest: Vec<String> = argv.collect();
        let file = rest.iter().enumerate().find_map(|(i, a)| {
            if let Some(path) = a.strip_prefix("--job.config_file=") {
                return Some(PathBuf::from(path));
            }
            (a == "--job.config_file").then(|| rest.get(i + 1).map(PathBuf::from))?
        });
        let mut args = vec![program.clone()];
        if let Some(file) = file {
            args.extend(config_file_args(&file)?);
        }
        args.extend(rest);
        let (args, notes) = crate::flame_flags::resolve(&args[1..]).map_err(anyhow::Error::msg)?;
        let mut seen = Vec::new();
        for note in notes {
            if !seen.contains(&note) {
                eprintln!("flame-train: {note}");
                seen.push(note);
            }
        }
        Ok(Self::try_parse_from(std::iter::once(program).chain(args))?)
    }
}

/// The flags a `--job.config_file` stands for: `--section.key=value` for each key flame-train or
/// [`crate::flame_flags`] knows; any other key is an error naming the file.
fn config_file_args(file: &Path) -> anyhow::Result<Vec<String>> {
    use clap::CommandFactory;
    let name = || format!("--job.config_file {}", file.display());
    let text = std::fs::read_to_string(file).with_context(name)?;
    let table: toml::Table = toml::from_str(&text).with_context(name)?;
    let command = Args::command();
    let known: Vec<&str> = command
        .get_arguments()
        .filter_map(clap::Arg::get_long)
        .collect();
    let mut args = Vec::new();
    for (section, value) in &table {
        let entries: Vec<(String, &toml::Value)> = match value.as_table() {
            Some(keys) => keys
                .iter()
                .map(|(k, v)| (format!("{section}.{k}"), v))
                .collect(),
            None => vec![(section.clone(), value)],
        };
        for (key, value) in entries {
            if !known.contains(&key.as_str()) && !crate::flame_flags::knows(&key) {
                anyhow::bail!(
                    "{}: {key} is neither a flame-train flag nor one of flame's",
                    file.display()
                );
            }
            let text = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // Every flag takes a value, booleans included (`--training.varlen=false`).
            args.push(format!("--{key}={text}"));
        }
    }
    Ok(args)
}

/// The dtype of a weights-only checkpoint (torchtitan's `export_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportDtype {
    /// As trained.
    Float32,
    /// bf16.
    Bfloat16,
    /// fp16.
    Float16,
}

impl ExportDtype {
    /// The libtorch kind.
    pub fn kind(self) -> tch::Kind {
        match self {
            Self::Float32 => tch::Kind::Float,
            Self::Bfloat16 => tch::Kind::BFloat16,
            Self::Float16 => tch::Kind::Half,
        }
    }
}

/// What `--checkpoint.interval` counts (torchtitan's `interval_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IntervalType {
    /// Optimizer steps: a checkpoint at every multiple of the interval.
    Steps,
    /// Seconds: a checkpoint after the first step that ends at least the interval after the last
    /// checkpoint (or the run's start).
    Seconds,
}

impl IntervalType {
    /// Whether a checkpoint is due after `step`, `since_last` after the last one; `interval` 0 never
    /// (the last step has its checkpoint anyway).
    pub fn due(self, interval: u64, step: u64, since_last: std::time::Duration) -> bool {
        interval > 0
            && match self {
                Self::Steps => step.is_multiple_of(interval),
                Self::Seconds => since_last.as_secs() >= interval,
            }
    }
}

/// Dtype of the gradient all-reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReduceDtype {
    /// Full precision (torchtitan's default).
    Float32,
    /// Half the bytes on the wire; the gradients are rounded to bfloat16 before the sum.
    Bfloat16,
}

/// `path` when it exists, else the files `fetch` gets for it as a hub model id (a path that is not one
/// stays as it is, for the reader to name).
fn hub_or_path(
    path: &Path,
    flag: &str,
    fetch: impl Fn(&str) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let id = match path.to_str() {
        Some(text) => flame_preprocess::source::hub::model_id(text)?,
        None => None,
    };
    match id {
        Some(id) => fetch(&id)
            .with_context(|| format!("{flag} {}: no such file; as a hub model id", path.display())),
        None => Ok(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::IntervalType;

    #[test]
    fn checkpoints_fall_due_by_steps_or_by_seconds() {
        let steps = IntervalType::Steps;
        assert!(steps.due(4, 8, Duration::ZERO) && !steps.due(4, 6, Duration::from_secs(99)));
        let seconds = IntervalType::Seconds;
        assert!(seconds.due(60, 3, Duration::from_mins(1)));
        assert!(!seconds.due(60, 4, Duration::from_millis(59_999)));
        assert!(!steps.due(0, 8, Duration::ZERO) && !seconds.due(0, 8, Duration::from_secs(9)));
    }
}
