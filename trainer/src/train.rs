//! The training run: flame's flags, batches from flame-stream, the step, logs, checkpoints, export.
//!
//! Each optimizer step reads `gradient_accumulation_steps` micro-batches of `batch_size` samples for
//! this rank from the data endpoint (step `s` of the job's stream: the checkpoint's data cursor is the
//! step and the job's fingerprint), scales each micro-batch loss by the accumulation, clips the global
//! gradient norm on the device, skips the update when that norm is not finite (with
//! `--training.skip_nan_inf`; the schedule still advances, as in flame), and sets the learning rate from
//! the schedule.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use flame_streamer::client::Client;
use flame_streamer::server::Endpoint;
use flame_streamer::spec::JobSpec;
use tch::{Device, nn};

use crate::config::ModelConfig;
use crate::dist::{Backend, Launch, Reducer, rendezvous};
use crate::model::{Checkpointing, Inputs, Transformer};
use crate::optim::{AdamW, AdamWConfig};
use crate::schedule::{DecayType, Schedule};

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
    /// The model config (flame's `configs/*.json`).
    #[arg(long = "model.config")]
    pub model_config: PathBuf,
    /// Tokenizer files copied into the Hugging Face export (a directory or a `tokenizer.json`).
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
    #[arg(long = "training.varlen", default_value_t = false)]
    pub varlen: bool,
    /// Activation checkpointing: `none` keeps every activation, `full` recomputes each layer in the
    /// backward pass (for long varlen batches).
    #[arg(
        long = "activation_checkpoint.mode",
        value_enum,
        default_value = "none"
    )]
    pub activation_checkpoint: Checkpointing,
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
    #[arg(long = "training.skip_nan_inf", default_value_t = false)]
    pub skip_nan_inf: bool,
    /// Seed of the initial weights.
    #[arg(long = "training.seed", default_value_t = 42)]
    pub seed: i64,
    /// Write checkpoints (and the Hugging Face export at the end).
    #[arg(long = "checkpoint.enable_checkpoint", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_checkpoint: bool,
    /// Steps between checkpoints (0: only at the end).
    #[arg(long = "checkpoint.interval", default_value_t = 500)]
    pub checkpoint_interval: u64,
    /// Checkpoints kept (0: all).
    #[arg(long = "checkpoint.keep_latest_k", default_value_t = 0)]
    pub keep_latest_k: usize,
    /// Resume from this step's checkpoint; -1: the latest.
    #[arg(long = "checkpoint.load_step", allow_hyphen_values = true)]
    pub load_step: Option<i64>,
    /// Steps between log lines.
    #[arg(long = "metrics.log_freq", default_value_t = 10)]
    pub log_freq: u64,
    /// Where checkpoints, metrics and the export go.
    #[arg(long = "job.dump_folder", default_value = "exp")]
    pub dump_folder: PathBuf,
    /// The flame-stream endpoint (`unix:///path` or `tcp://host:port`).
    #[arg(long = "data-endpoint")]
    pub data_endpoint: Endpoint,
    /// The job spec (TOML) to ask flame-stream for.
    #[arg(long = "data-job")]
    pub data_job: PathBuf,
    /// Device: `cpu` or `cuda` (`cuda:N`); default: CUDA when present.
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
    /// Seconds the ranks wait for each other at the rendezvous.
    #[arg(long = "comm.init_timeout_seconds", default_value_t = 300)]
    pub init_timeout_seconds: u64,
    /// Start this many local ranks (one per GPU) and wait for them, as `torchrun --nproc-per-node`.
    #[arg(long = "nproc-per-node", default_value_t = 1)]
    pub nproc_per_node: u32,
    /// A TOML file of the same keys (`[training]` `steps = 100`, …); flags given on the command line win.
    #[arg(long = "job.config_file")]
    pub config_file: Option<PathBuf>,
}

impl Args {
    /// Parses the command line, with the keys of `--job.config_file` (if any) read first, so that flags
    /// on the command line override them. Keys of the file that flame-train does not have (torchtitan's
    /// many others) are reported on stderr and skipped.
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
        let mut args = vec![program];
        if let Some(file) = file {
            args.extend(config_file_args(&file)?);
        }
        args.extend(rest);
        Ok(Self::try_parse_from(args)?)
    }
}

/// The flags a `--job.config_file` stands for.
fn config_file_args(file: &Path) -> anyhow::Result<Vec<String>> {
    use clap::CommandFactory;
    let name = || format!("--job.config_file {}", file.display());
    let text = std::fs::read_to_string(file).with_context(name)?;
    let table: toml::Table = toml::from_str(&text).with_context(name)?;
    let command = Args::command();
    let known: Vec<(String, bool)> = command
        .get_arguments()
        .filter_map(|a| {
            let takes_value = !matches!(a.get_action(), clap::ArgAction::SetTrue);
            a.get_long().map(|l| (l.to_string(), takes_value))
        })
        .collect();
    let (mut args, mut skipped) = (Vec::new(), Vec::new());
    for (section, value) in &table {
        let entries: Vec<(String, &toml::Value)> = match value.as_table() {
            Some(keys) => keys
                .iter()
                .map(|(k, v)| (format!("{section}.{k}"), v))
                .collect(),
            None => vec![(section.clone(), value)],
        };
        for (key, value) in entries {
            let Some((_, takes_value)) = known.iter().find(|(l, _)| *l == key) else {
                skipped.push(key);
                continue;
            };
            let text = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if *takes_value {
                args.push(format!("--{key}"));
                args.push(text);
            } else if value.as_bool() == Some(true) {
                args.push(format!("--{key}"));
            }
        }
    }
    if !skipped.is_empty() {
        eprintln!(
            "flame-train: {}: not flame-train keys, skipped: {}",
            file.display(),
            skipped.join(", ")
        );
    }
    Ok(args)
}

/// Dtype of the gradient all-reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReduceDtype {
    /// Full precision (torchtitan's default).
    Float32,
    /// Half the bytes on the wire; the gradients are rounded to bfloat16 before the sum.
    Bfloat16,
}

/// What a run did.
#[derive(Debug)]
pub struct Summary {
    /// Loss of each step taken in this run (step number, loss).
    pub losses: Vec<(u64, f64)>,
    /// The Hugging Face export.
    pub export: PathBuf,
    /// Whether this process wrote the export (rank 0, with checkpoints enabled).
    pub exported: bool,
}

fn device(args: &Args, launch: &Launch) -> anyhow::Result<Device> {
    Ok(match args.device.as_deref() {
        None if tch::Cuda::is_available() => Device::Cuda(launch.local_rank as usize),
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(d) => match d.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => bail!("--training.device {d:?}: expected cpu, cuda or cuda:N"),
        },
    })
}

/// Checks the data job against the flags and the model before any step runs.
fn check_job(args: &Args, job: &JobSpec, config: &ModelConfig, world: u32) -> anyhow::Result<()> {
    let want_global = args.batch_size * args.gradient_accumulation_steps * world;
    if job.seq_len != args.seq_len {
        bail!(
            "the data job serves seq_len {}, the run trains --training.seq_len {}",
            job.seq_len,
            args.seq_len
        );
    }
    if job.micro_batch_size != args.batch_size || job.global_batch_size != want_global {
        bail!(
            "the data job's batches (micro {}, global {}) are not --training.batch_size {} × gradient_accumulation_steps {} × {world} ranks",
            job.micro_batch_size,
            job.global_batch_size,
            args.batch_size,
            args.gradient_accumulation_steps
        );
    }
    if job.varlen != args.varlen {
        bail!(
            "the data job has varlen = {}, the run --training.varlen {}",
            job.varlen,
            args.varlen
        );
    }
    if config.vocab_size == 0 {
        bail!("the model has no vocabulary");
    }
    Ok(())
}

/// The training state a checkpoint holds besides tensors.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TrainState {
    step: u64,
    tokens: u64,
    skipped_steps: u64,
    optimizer_steps: i64,
    /// The data cursor: the next step's samples start at `step × global_batch_size` in this job.
    data_fingerprint: String,
    samples_consumed: u64,
}

fn checkpoint_dir(args: &Args) -> PathBuf {
    args.dump_folder.join("checkpoint")
}

fn steps_saved(args: &Args) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(checkpoint_dir(args))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    steps
}

/// Writes `step-N/` atomically (a temporary directory renamed into place).
fn save_checkpoint(
    args: &Args,
    vs: &nn::VarStore,
    optimizer: &AdamW,
    state: &TrainState,
) -> anyhow::Result<()> {
    let root = checkpoint_dir(args);
    std::fs::create_dir_all(&root)?;
    let tmp = root.join(format!(".step-{}.partial", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    vs.save(tmp.join("model.safetensors"))?;
    let opt = optimizer.state();
    tch::Tensor::write_safetensors(&opt, tmp.join("optimizer.safetensors"))?;
    std::fs::write(
        tmp.join("train_state.json"),
        serde_json::to_vec_pretty(state)?,
    )?;
    let dest = root.join(format!("step-{}", state.step));
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest)?;
    if args.keep_latest_k > 0 {
        let steps = steps_saved(args);
        for old in &steps[..steps.len().saturating_sub(args.keep_latest_k)] {
            std::fs::remove_dir_all(root.join(format!("step-{old}")))?;
        }
    }
    Ok(())
}

fn load_checkpoint(
    args: &Args,
    step: u64,
    vs: &mut nn::VarStore,
    optimizer: &mut AdamW,
) -> anyhow::Result<TrainState> {
    let dir = checkpoint_dir(args).join(format!("step-{step}"));
    let context = |what: &str| format!("checkpoint {}: {what}", dir.display());
    let state: TrainState = serde_json::from_slice(
        &std::fs::read(dir.join("train_state.json"))
            .with_context(|| context("train_state.json"))?,
    )
    .with_context(|| context("train_state.json"))?;
    vs.load(dir.join("model.safetensors"))
        .with_context(|| context("model.safetensors"))?;
    let opt = tch::Tensor::read_safetensors(dir.join("optimizer.safetensors"))
        .with_context(|| context("optimizer.safetensors"))?;
    let opt: Vec<(String, tch::Tensor)> = opt
        .into_iter()
        .map(|(k, t)| (k, t.to_device(vs.device())))
        .collect();
    optimizer
        .load_state(&opt, state.optimizer_steps)
        .map_err(|e| anyhow::anyhow!(context(&e)))?;
    Ok(state)
}

/// Writes `model.safetensors`, a Llama `config.json` and the tokenizer files (from `tokenizer`, a
/// directory or a `tokenizer.json`) into `dir`, for `transformers.AutoModelForCausalLM`.
pub fn export_hf(
    dir: &Path,
    vs: &nn::VarStore,
    config: &ModelConfig,
    tokenizer: Option<&Path>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let named: Vec<(String, tch::Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.to_device(Device::Cpu).contiguous()))
        .collect();
    tch::Tensor::write_safetensors(&named, dir.join("model.safetensors"))?;
    let hf = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "mlp_bias": false,
        "hidden_act": "silu",
        "initializer_range": config.initializer_range,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&hf)?)?;
    if let Some(tokenizer) = tokenizer {
        let files: Vec<PathBuf> = if tokenizer.is_dir() {
            [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "tokenizer.model",
            ]
            .iter()
            .map(|f| tokenizer.join(f))
            .filter(|p| p.exists())
            .collect()
        } else {
            vec![tokenizer.to_path_buf()]
        };
        for file in files {
            let name = file.file_name().context("tokenizer file name")?;
            std::fs::copy(&file, dir.join(name))
                .with_context(|| format!("copy {}", file.display()))?;
        }
    }
    Ok(())
}

/// Runs training as the flags and the launcher's environment (see [`Launch::from_env`]) say.
pub fn run(args: &Args) -> anyhow::Result<Summary> {
    let launch = Launch::from_env(|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?;
    run_as(args, &launch)
}

/// Connects the ranks: NCCL on CUDA (rank 0's unique id handed out by the rendezvous), the
/// rendezvous's own connections on the CPU.
fn backend(args: &Args, launch: &Launch, device: Device) -> anyhow::Result<Backend> {
    if launch.world_size == 1 {
        return Ok(Backend::Single);
    }
    let timeout = std::time::Duration::from_secs(args.init_timeout_seconds);
    let (group, id) = rendezvous(launch, timeout, || {
        if device.is_cuda() {
            crate::shim::nccl_unique_id()
        } else {
            Ok(Vec::new())
        }
    })
    .map_err(anyhow::Error::msg)?;
    Ok(if device.is_cuda() {
        let nccl = crate::shim::Nccl::init(&id, launch.world_size, launch.rank)
            .map_err(|e| anyhow::anyhow!("rank {}: {e}", launch.rank))?;
        Backend::Nccl(nccl, group)
    } else {
        Backend::Tcp(group)
    })
}

/// Runs training as rank `launch.rank` of `launch.world_size`.
#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
pub fn run_as(args: &Args, launch: &Launch) -> anyhow::Result<Summary> {
    let config = ModelConfig::load(&args.model_config)?;
    let job_text = std::fs::read_to_string(&args.data_job)
        .with_context(|| format!("--data-job {}", args.data_job.display()))?;
    let job = JobSpec::from_toml(&job_text)
        .with_context(|| format!("--data-job {}", args.data_job.display()))?;
    let (rank, world) = (launch.rank, launch.world_size);
    check_job(args, &job, &config, world)?;
    let device = device(args, launch)?;
    if let Device::Cuda(i) = device {
        crate::shim::cuda_set_device(i).map_err(|e| anyhow::anyhow!("cuda:{i}: {e}"))?;
    }
    let mut client = Client::connect(args.data_endpoint.clone(), &job, rank, world, None, 8)
        .with_context(|| format!("--data-endpoint {}", args.data_endpoint))?;
    // On the server's host, batches come through shared memory.
    let shared_memory = matches!(args.data_endpoint, Endpoint::Unix(_));
    if shared_memory {
        client.open_shared_memory(4)?;
    }

    // flame trains in bfloat16 autocast on GPUs (fp32 weights, optimizer and loss).
    let autocast = device.is_cuda();
    if autocast {
        crate::shim::autocast_cuda_bf16().map_err(|e| anyhow::anyhow!("autocast: {e}"))?;
        crate::shim::allow_tf32(true).map_err(|e| anyhow::anyhow!("tf32: {e}"))?;
    }
    tch::manual_seed(args.seed);
    let mut vs = nn::VarStore::new(device);
    let model = Transformer::new(&vs.root(), &config);
    let mut params: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let segments: Vec<usize> = params
        .iter()
        .map(|(name, _)| model.segment_of(name).context(name.clone()))
        .collect::<anyhow::Result<_>>()?;
    let reduce_kind = match args.reduce_dtype {
        ReduceDtype::Float32 => tch::Kind::Float,
        ReduceDtype::Bfloat16 => tch::Kind::BFloat16,
    };
    let mut reducer = Reducer::new(
        params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        &segments,
        reduce_kind,
        args.bucket_cap_mb << 20,
        world > 1,
    )
    .map_err(anyhow::Error::msg)?;
    let mut backend = backend(args, launch, device)?;
    let mut optimizer = AdamW::new(
        params,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: args.eps,
            weight_decay: args.weight_decay,
        },
    );
    let schedule = Schedule::new(
        args.steps,
        args.warmup_steps,
        args.decay_ratio,
        args.decay_type,
        args.lr_min,
    );
    let mut state = TrainState {
        step: 0,
        tokens: 0,
        skipped_steps: 0,
        optimizer_steps: 0,
        data_fingerprint: client.fingerprint.clone(),
        samples_consumed: 0,
    };
    if let Some(load) = args.load_step {
        let step = if load < 0 {
            *steps_saved(args)
                .last()
                .context("--checkpoint.load_step -1: no checkpoint saved yet")?
        } else {
            u64::try_from(load)?
        };
        state = load_checkpoint(args, step, &mut vs, &mut optimizer)?;
        if state.data_fingerprint != client.fingerprint {
            bail!(
                "checkpoint step-{step} was trained on data job {}, --data-job is {}: resuming would change the stream",
                state.data_fingerprint,
                client.fingerprint
            );
        }
    }

    // Rank 0 writes the logs, metrics, checkpoints and the export.
    let mut outputs = if rank == 0 {
        std::fs::create_dir_all(&args.dump_folder)?;
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.dump_folder.join("metrics.jsonl"))?;
        let tensorboard = crate::tensorboard::EventWriter::create(&args.dump_folder.join("tb"))
            .with_context(|| format!("{}/tb", args.dump_folder.display()))?;
        Some((metrics, tensorboard))
    } else {
        None
    };
    let flops_per_token = config.flops_per_token(args.context_len.unwrap_or(args.seq_len));
    let peak_flops = match device {
        Device::Cuda(i) => crate::shim::cuda_device_name(i).and_then(|name| peak_bf16_flops(&name)),
        _ => None,
    };
    let global = u64::from(args.batch_size * args.gradient_accumulation_steps * world);
    let mut losses = Vec::new();
    let start = Instant::now();
    let (mut window_tokens, mut window_start, mut window_wait) = (0u64, Instant::now(), 0f64);
    while state.step < args.steps {
        let s = state.step;
        if reducer.owns_grads() {
            reducer.zero_grads();
        } else {
            optimizer.zero_grad();
        }
        let mut loss_total = tch::Tensor::zeros([], (tch::Kind::Float, device));
        let mut step_wait = 0f64;
        for micro in 0..u64::from(args.gradient_accumulation_steps) {
            let wait = Instant::now();
            let inputs = if shared_memory {
                let b = client.micro_batch_in_place(s, micro)?;
                check_vocabulary(s, b.tokens(), config.vocab_size)?;
                let cu: Vec<Vec<u32>> = (0..b.len()).map(|i| b.cu_seqlens(i).to_vec()).collect();
                Inputs::new(b.tokens(), args.seq_len as usize, &cu, device)
            } else {
                let samples = client.micro_batch(s, micro)?;
                let tokens: Vec<u32> = samples.iter().flat_map(|x| x.tokens.clone()).collect();
                check_vocabulary(s, &tokens, config.vocab_size)?;
                let cu: Vec<Vec<u32>> = samples.iter().map(|x| x.cu_seqlens.clone()).collect();
                Inputs::new(&tokens, args.seq_len as usize, &cu, device)
            };
            step_wait += wait.elapsed().as_secs_f64();
            let scale = 1.0 / f64::from(args.gradient_accumulation_steps);
            // Gradients are reduced across ranks in the last micro-batch's backward pass only.
            let last = micro + 1 == u64::from(args.gradient_accumulation_steps);
            let loss = crate::shim::autocast(autocast, || {
                model.forward_backward(&inputs, scale, args.activation_checkpoint, &mut |segment| {
                    if last {
                        reducer.segment_done(segment, &mut backend)
                    } else {
                        Ok(())
                    }
                })
            })
            .and_then(|loss| loss)
            .map_err(|e| anyhow::anyhow!("step {s}: {e}"))?;
            loss_total += loss * scale;
        }
        // The loss and the time spent waiting for data, averaged over the ranks.
        #[allow(clippy::cast_possible_truncation)]
        let wait = tch::Tensor::from_slice(&[step_wait as f32]).to_device(device);
        let stats = tch::Tensor::cat(&[loss_total.reshape([1]), wait], 0);
        reducer
            .finish(&mut backend)
            .and_then(|()| backend.all_reduce_avg(&stats))
            .map_err(|e| anyhow::anyhow!("step {s}: {e}"))?;
        // One host synchronisation per step: the loss and the gradient norm are read together.
        let loss_sum = stats.double_value(&[0]);
        window_wait += stats.double_value(&[1]);
        let norm = optimizer.grad_norm();
        let gnorm = norm.double_value(&[]);
        let lr = args.lr * schedule.factor(s);
        if args.skip_nan_inf && !gnorm.is_finite() {
            state.skipped_steps += 1;
        } else {
            optimizer.clip(&norm, args.max_norm);
            optimizer.step(lr);
        }
        state.step += 1;
        state.optimizer_steps = optimizer.steps_taken();
        state.samples_consumed = state.step * global;
        let step_tokens = global * u64::from(args.seq_len);
        state.tokens += step_tokens;
        window_tokens += step_tokens;
        losses.push((state.step, loss_sum));
        let log_due =
            state.step == 1 || state.step.is_multiple_of(args.log_freq) || state.step == args.steps;
        if let (true, Some((metrics, tensorboard))) = (log_due, outputs.as_mut()) {
            let elapsed = window_start.elapsed().as_secs_f64();
            // Per device, as flame counts it.
            let tps = window_tokens as f64 / elapsed / f64::from(world);
            let tflops = tps * flops_per_token as f64 / 1e12;
            let waiting = 100.0 * window_wait / elapsed;
            let total = start.elapsed().as_secs_f64();
            let eta = total / state.step as f64 * (args.steps - state.step) as f64;
            let memory = device_memory(device);
            let mfu = peak_flops.map(|peak| 100.0 * tflops * 1e12 / peak);
            eprintln!(
                "step: {:>6}  loss: {loss_sum:7.4}  memory: {}  tps: {}  tflops: {tflops:.2}  mfu: {}  lr: {:.4e} gnorm: {gnorm:5.2} data: {waiting:.1}% [{}<{}]",
                state.step,
                memory.map_or_else(
                    || "-".into(),
                    |(used, total)| format!(
                        "{:.2}GiB({:.2}%)",
                        used as f64 / GIB,
                        100.0 * used as f64 / total as f64
                    )
                ),
                thousands(tps),
                mfu.map_or_else(|| "-".into(), |m| format!("{m:.2}%")),
                args.lr * schedule.factor(s + 1),
                clock(total),
                clock(eta)
            );
            writeln!(
                metrics,
                "{}",
                serde_json::json!({"step": state.step, "loss": loss_sum, "tps": tps, "tflops": tflops,
                    "mfu_pct": mfu, "memory_gib": memory.map(|m| m.0 as f64 / GIB),
                    "lr": lr, "grad_norm": gnorm, "data_loading_pct": waiting,
                    "skipped_steps": state.skipped_steps, "tokens": state.tokens})
            )?;
            #[allow(clippy::cast_precision_loss)]
            tensorboard.scalars(
                state.step,
                &[
                    ("loss_metrics/global_avg_loss", loss_sum),
                    ("throughput(tps)", tps),
                    ("tflops", tflops),
                    ("mfu(%)", mfu.unwrap_or(0.0)),
                    ("memory/used(GiB)", memory.map_or(0.0, |m| m.0 as f64 / GIB)),
                    ("optimizer/lr", lr),
                    ("optimizer/grad_norm", gnorm),
                    ("optimizer/skipped_step", state.skipped_steps as f64),
                    ("time_metrics/data_loading(%)", waiting),
                ],
            )?;
            (window_tokens, window_start, window_wait) = (0, Instant::now(), 0.0);
        }
        let interval_due =
            args.checkpoint_interval > 0 && state.step.is_multiple_of(args.checkpoint_interval);
        if rank == 0 && args.enable_checkpoint && (interval_due || state.step == args.steps) {
            save_checkpoint(args, &vs, &optimizer, &state)?;
        }
    }
    let export = args.dump_folder.join("hf");
    if rank == 0 && args.enable_checkpoint {
        export_hf(&export, &vs, &config, args.tokenizer_path.as_deref())?;
    }
    Ok(Summary {
        losses,
        export,
        exported: rank == 0 && args.enable_checkpoint,
    })
}

const GIB: f64 = 1_073_741_824.0;

/// Device memory in use on a CUDA device (see [`crate::shim::cuda_memory`]); `None` on the CPU.
fn device_memory(device: Device) -> Option<(u64, u64)> {
    match device {
        Device::Cuda(i) => crate::shim::cuda_memory(i),
        _ => None,
    }
}

/// Dense bf16 peak of a GPU by its name, as torchtitan's `get_peak_flops` tabulates them (SXM parts
/// unless the name says otherwise); `None` for a GPU not in the table, whose MFU is then not shown.
pub fn peak_bf16_flops(name: &str) -> Option<f64> {
    let tflops = if name.contains("H100") || name.contains("H200") || name.contains("H800") {
        if name.contains("PCIe") {
            756.0
        } else if name.contains("NVL") {
            835.0
        } else {
            989.0
        }
    } else if name.contains("GB200") {
        2500.0
    } else if name.contains("B200") {
        2250.0
    } else if name.contains("A100") || name.contains("A800") {
        312.0
    } else if name.contains("L40S") {
        362.0
    } else {
        return None;
    };
    Some(tflops * 1e12)
}

/// `24,723`, as flame prints tokens per second.
fn thousands(x: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let digits = (x.max(0.0).round() as u64).to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn clock(seconds: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = seconds.max(0.0) as u64;
    format!("{:2}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn check_vocabulary(step: u64, tokens: &[u32], vocab_size: u32) -> anyhow::Result<()> {
    if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab_size) {
        bail!(
            "step {step}: the stream holds token id {bad}, outside the model's vocabulary of {vocab_size}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_formats_tokens_per_second_and_knows_the_peaks_of_common_gpus() {
        assert_eq!(thousands(24_723.4), "24,723");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(peak_bf16_flops("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(peak_bf16_flops("NVIDIA H200"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(peak_bf16_flops("NVIDIA GeForce RTX 4090"), None);
    }
}
