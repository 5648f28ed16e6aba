//! The training run: set up from the flags, then the loop of optimizer steps.
//!
//! Each optimizer step reads `gradient_accumulation_steps` micro-batches of `batch_size` samples for
//! this rank from the data endpoint (step `s` of the job's stream: the checkpoint's data cursor is the
//! step and the job's fingerprint), scales each micro-batch loss by the accumulation, clips the global
//! gradient norm on the device, skips the update when that norm is not finite (with
//! `--training.skip_nan_inf`; the schedule still advances, as in flame), and sets the learning rate from
//! the schedule. The parts around the loop are components of their own: [`crate::data`] (the batches),
//! [`crate::checkpoint`], [`crate::metrics`] (the log line and metrics files), [`crate::export`] and
//! [`crate::dist`] (the ranks).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use tch::{Device, Tensor, nn};

use crate::checkpoint::{self, TrainState};
pub use crate::cli::{Args, ReduceDtype};
use crate::config::ModelConfig;
use crate::data::{DataInput, check_job};
use crate::dist::{Backend, Expired, Launch, Reducer, Watchdog, rendezvous};
pub use crate::export::{export_hf, resolve_tokenizer};
use crate::metrics::{Metrics, StepReport};
use crate::models::{self, Model};
use crate::named_data::{data_service, load_job};
use crate::optim::{AdamW, AdamWConfig};
use crate::schedule::Schedule;

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

/// The device `--training.device` names for this process: `cuda` (and the default, where CUDA is
/// present) is the local rank's GPU, as torchrun and Slurm assign them.
fn device(args: &Args, launch: &Launch, cuda_available: bool) -> anyhow::Result<Device> {
    let local = launch.local_rank as usize;
    Ok(match args.device.as_deref() {
        None if cuda_available => Device::Cuda(local),
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(local),
        Some(d) => match d.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => bail!("--training.device {d:?}: expected cpu, cuda or cuda:N"),
        },
    })
}

/// Runs training as the flags and the launcher's environment (see [`Launch::from_env`]) say.
///
/// # Errors
/// When the setup is wrong (reported before any step) or a step fails.
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

/// This rank's device, made current; on CUDA with bfloat16 autocast and TF32 on, as flame trains on
/// GPUs (fp32 weights, optimizer and loss); deterministic algorithms only with
/// `--training.deterministic`. Returns the device and whether autocast is on.
fn start_device(args: &Args, launch: &Launch) -> anyhow::Result<(Device, bool)> {
    let device = device(args, launch, tch::Cuda::is_available())?;
    if let Device::Cuda(i) = device {
        crate::shim::cuda_set_device(i).map_err(|e| anyhow::anyhow!("cuda:{i}: {e}"))?;
        crate::shim::autocast_cuda_bf16().map_err(|e| anyhow::anyhow!("autocast: {e}"))?;
        crate::shim::allow_tf32(true).map_err(|e| anyhow::anyhow!("tf32: {e}"))?;
    }
    if args.deterministic {
        crate::shim::set_deterministic(true).map_err(|e| anyhow::anyhow!("deterministic: {e}"))?;
        anyhow::ensure!(
            crate::shim::deterministic(),
            "libtorch did not take deterministic mode"
        );
        if launch.rank == 0 {
            eprintln!(
                "flame-train: deterministic algorithms only (cuDNN deterministic, no benchmarking, \
                 CUBLAS_WORKSPACE_CONFIG={})",
                std::env::var("CUBLAS_WORKSPACE_CONFIG").unwrap_or_default()
            );
        }
    }
    Ok((device, device.is_cuda()))
}

/// Runs training as rank `launch.rank` of `launch.world_size`.
///
/// # Errors
/// As [`run`].
pub fn run_as(args: &Args, launch: &Launch) -> anyhow::Result<Summary> {
    let args = &args.resolve_hub()?;
    let config = ModelConfig::load(&args.model_config_path()?)?;
    let tokenizer = args
        .tokenizer_path
        .as_deref()
        .map(resolve_tokenizer)
        .transpose()?;
    let (rank, world) = (launch.rank, launch.world_size);
    let job = load_job(args, world)?;
    check_job(args, &job, &config, world)?;
    let (device, autocast) = start_device(args, launch)?;
    // The data service: --data-endpoint's, or flame-stream's server in this process (kept for the run).
    let (endpoint, _service) = data_service(args)?;
    let data = DataInput::connect(
        args,
        &endpoint,
        &job,
        (rank, world),
        config.vocab_size,
        device,
    )?;
    tch::manual_seed(args.seed);
    let mut vs = nn::VarStore::new(device);
    let (fla, mixing) = args
        .kernels
        .resolve(&config, device)
        .map_err(anyhow::Error::msg)?;
    let model = models::build(&vs.root(), &config, fla);
    if rank == 0 {
        let what = if config.mixer.is_linear() {
            "token mixing"
        } else {
            "loss and residual norms"
        };
        eprintln!(
            "flame-train: {}'s {what} runs on {mixing}",
            config.model_type
        );
    }
    let (mut optimizer, reducer) = optimizer_and_reducer(args, &vs, model.as_ref(), world > 1)?;
    let backend = backend(args, launch, device)?;
    let (mut state, resumed) =
        checkpoint::resume(args, &mut vs, &mut optimizer, data.fingerprint())?;
    if let (Some(dir), false) = (&args.initial_load_path, resumed) {
        let set = crate::export::load_hf_weights(dir, &vs)?;
        if rank == 0 {
            eprintln!("flame-train: {set} weights from {}", dir.display());
        }
    }
    if args.create_seed_checkpoint {
        // torchtitan's seed checkpoint: the initial weights as `step-0`, written by one rank.
        anyhow::ensure!(
            world == 1 && state.step == 0,
            "--checkpoint.create_seed_checkpoint writes step 0 of a fresh run on one rank (this is \
             rank {rank} of {world}, at step {})",
            state.step
        );
        checkpoint::save(args, &vs, &optimizer, &state)?;
        return Ok(Summary {
            losses: Vec::new(),
            export: args.dump_folder.join("hf"),
            exported: false,
        });
    }
    // Every rank hands its server the checkpoint's cursors (one server per node, each needs them).
    if !state.stream_cursors.is_empty() {
        data.stream_cursors(state.step, &state.stream_cursors)?;
    }
    // Rank 0 writes the logs, metrics, checkpoints and the export.
    let flops_per_token = model.flops_per_token(args.context_len.unwrap_or(args.seq_len));
    let mut metrics = (rank == 0)
        .then(|| open_metrics(args, device, world, flops_per_token, state.step))
        .transpose()?;
    let watchdog = (world > 1)
        .then(|| collective_watchdog(rank, state.step + 1))
        .transpose()?;
    let mut run = Run {
        args,
        model,
        optimizer,
        reducer,
        backend,
        watchdog,
        data,
        schedule: Schedule::new(
            args.steps,
            args.warmup_steps,
            args.decay_ratio,
            args.decay_type,
            args.lr_min,
        ),
        autocast,
        device,
    };
    let losses = run.steps(&mut state, metrics.as_mut(), &vs, rank, world)?;
    let export = args.dump_folder.join("hf");
    if rank == 0 && args.enable_checkpoint {
        export_hf(&export, &vs, run.model.as_ref(), tokenizer.as_deref())?;
    }
    Ok(Summary {
        losses,
        export,
        exported: rank == 0 && args.enable_checkpoint,
    })
}

impl Run<'_> {
    /// Trains from `state.step` to the last step, logging (rank 0's `metrics`) and checkpointing
    /// (rank 0) on the way; returns each step's loss.
    fn steps(
        &mut self,
        state: &mut TrainState,
        mut metrics: Option<&mut Metrics>,
        vs: &nn::VarStore,
        rank: u32,
        world: u32,
    ) -> anyhow::Result<Vec<(u64, f64)>> {
        let (args, run) = (self.args, self);
        let global = u64::from(args.batch_size * args.gradient_accumulation_steps * world);
        let mut losses = Vec::new();
        let mut last_save = std::time::Instant::now();
        let first = state.step + 1;
        while state.step < args.steps {
            let profiled = args.enable_profiling
                && args.profile_freq > 0
                && (state.step + 1).is_multiple_of(args.profile_freq);
            if profiled {
                crate::shim::profiler_start(run.device.is_cuda()).map_err(anyhow::Error::msg)?;
            }
            // Only rank 0 writes checkpoints, and its clock alone decides `seconds` intervals, as the
            // step starts; every rank learns with the step's loss whether a checkpoint follows.
            let save_after = rank == 0
                && args.enable_checkpoint
                && (args.interval_type.due(
                    args.checkpoint_interval,
                    state.step + 1,
                    last_save.elapsed(),
                ) || state.step + 1 == args.steps);
            let (report, wait, checkpoint_follows) =
                run.timed_step(state, global, save_after, state.step + 1 == first)?;
            if profiled {
                let dir = (args.dump_folder.join(&args.traces_folder))
                    .join(format!("iteration_{}", state.step));
                std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
                let trace = dir.join(format!("rank{rank}_trace.json"));
                crate::shim::profiler_stop(&trace).map_err(anyhow::Error::msg)?;
            }
            losses.push((report.step, report.loss));
            if let Some(metrics) = metrics.as_mut() {
                metrics.add(global * u64::from(args.seq_len), wait);
                let step = report.step;
                if step == 1 || step.is_multiple_of(args.log_freq) || step == args.steps {
                    metrics.log(&report, args.steps)?;
                }
            }
            crate::crash::reached(crate::crash::Point::Logged, state.step);
            if checkpoint_follows {
                if rank == 0 {
                    state.stream_cursors = run.data.stream_cursors(state.step, &[])?;
                    checkpoint::save(args, vs, &run.optimizer, state)?;
                    last_save = std::time::Instant::now();
                }
                if state.step < args.steps {
                    run.after_checkpoint(state.step, rank)?;
                }
            }
        }
        Ok(losses)
    }
}

/// Rank 0's log line and metrics files, from step `step` on.
fn open_metrics(
    args: &Args,
    device: Device,
    world: u32,
    flops_per_token: u64,
    step: u64,
) -> anyhow::Result<Metrics> {
    Metrics::open(
        &args.dump_folder,
        &args.tb_folder,
        device,
        world,
        flops_per_token,
        step,
    )
}

/// The watchdog of a run of several ranks, whose first step is `first`: a step that outlives its timeout
/// ends this process with SIGABRT (no destructor runs while the training thread is blocked in a
/// collective), as torch's NCCL watchdog tears a process down, after saying which step and flag.
fn collective_watchdog(rank: u32, first: u64) -> anyhow::Result<Watchdog> {
    Watchdog::start(move |expired: Expired| {
        let flag = if expired.step == first {
            "--comm.init_timeout_seconds, a run's first step"
        } else {
            "--comm.train_timeout_seconds"
        };
        eprintln!(
            "flame-train: rank {rank}: step {} did not finish within {} s ({flag}): a rank has \
             stalled, or died without closing its connections; aborting",
            expired.step,
            expired.timeout.as_secs()
        );
        std::process::abort();
    })
    .context("starting the collective watchdog")
}

/// AdamW over the model's parameters (sorted by name) and the reducer of their gradients, in buckets
/// ordered by the backward segment that completes them.
fn optimizer_and_reducer(
    args: &Args,
    vs: &nn::VarStore,
    model: &dyn Model,
    distributed: bool,
) -> anyhow::Result<(AdamW, Reducer)> {
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let segments: Vec<usize> = params
        .iter()
        .map(|(name, _)| model.segment_of(name).context(name.clone()))
        .collect::<anyhow::Result<_>>()?;
    let reduce_kind = match args.reduce_dtype {
        ReduceDtype::Float32 => tch::Kind::Float,
        ReduceDtype::Bfloat16 => tch::Kind::BFloat16,
    };
    let reducer = Reducer::new(
        params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        &segments,
        reduce_kind,
        args.bucket_cap_mb << 20,
        distributed,
    )
    .map_err(anyhow::Error::msg)?;
    let optimizer = AdamW::new(
        params,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: args.eps,
            weight_decay: args.weight_decay,
        },
    );
    Ok((optimizer, reducer))
}

/// What one optimizer step needs.
struct Run<'a> {
    args: &'a Args,
    model: Box<dyn Model>,
    optimizer: AdamW,
    reducer: Reducer,
    backend: Backend,
    /// Several ranks: bounds each step (`dist/watchdog.rs`).
    watchdog: Option<Watchdog>,
    data: DataInput,
    schedule: Schedule,
    autocast: bool,
    device: Device,
}

impl Run<'_> {
    /// Holds the ranks until rank 0 has written step `step`'s checkpoint. The others wait with no
    /// timeout (rank 0's death ends the wait) rather than in the next step's collectives, whose timeout
    /// the save may outlast; rank 0's wait for them counts towards the next step's.
    fn after_checkpoint(&mut self, step: u64, rank: u32) -> anyhow::Result<()> {
        if let (0, Some(watchdog)) = (rank, &self.watchdog) {
            let timeout = std::time::Duration::from_secs(self.args.train_timeout_seconds);
            watchdog.arm(step + 1, timeout);
        }
        self.backend
            .barrier()
            .map_err(|e| anyhow::anyhow!("waiting for step {step}'s checkpoint: {e}"))
    }

    /// [`Self::step`] under the watchdog, with a run's first step's timeout or the later steps'.
    fn timed_step(
        &mut self,
        state: &mut TrainState,
        global: u64,
        save_after: bool,
        first: bool,
    ) -> anyhow::Result<(StepReport, f64, bool)> {
        if let Some(watchdog) = &self.watchdog {
            let seconds = if first {
                self.args.init_timeout_seconds
            } else {
                self.args.train_timeout_seconds
            };
            watchdog.arm(state.step + 1, std::time::Duration::from_secs(seconds));
        }
        let taken = self.step(state, global, save_after);
        if let Some(watchdog) = &self.watchdog {
            watchdog.disarm();
        }
        taken
    }

    /// Fetches the micro-batch after (`step`, `micro`) while the GPU runs this one's queued work
    /// (none after the run's last); returns the seconds it cost the GPU: all of the fetch's time
    /// if the GPU ran out of work before the fetch was done (always on the CPU), else none.
    fn fetch_ahead(&mut self, step: u64, micro: u64, last_micro: bool) -> anyhow::Result<f64> {
        let next = if last_micro {
            (step + 1 < self.args.steps).then_some((step + 1, 0))
        } else {
            Some((step, micro + 1))
        };
        let Some((step, micro)) = next else {
            return Ok(0.0);
        };
        let started = Instant::now();
        self.data.prefetch(step, micro);
        let busy = self.device.is_cuda()
            && crate::shim::cuda_busy().map_err(|e| anyhow::anyhow!("step {step}: {e}"))?;
        Ok(if busy {
            0.0
        } else {
            started.elapsed().as_secs_f64()
        })
    }

    /// Takes optimizer step `state.step` (`global` samples over all ranks) and advances `state`;
    /// returns what to log, the seconds spent waiting for data, averaged over the ranks, and whether a
    /// checkpoint follows (`save_after` on rank 0).
    fn step(
        &mut self,
        state: &mut TrainState,
        global: u64,
        save_after: bool,
    ) -> anyhow::Result<(StepReport, f64, bool)> {
        let (args, s) = (self.args, state.step);
        if self.reducer.owns_grads() {
            self.reducer.zero_grads();
        } else {
            self.optimizer.zero_grad();
        }
        let accumulation = u64::from(args.gradient_accumulation_steps);
        let scale = 1.0 / f64::from(args.gradient_accumulation_steps);
        let mut loss_total = Tensor::zeros([], (tch::Kind::Float, self.device));
        let mut step_wait = 0f64;
        for micro in 0..accumulation {
            let wait = Instant::now();
            let inputs = self.data.micro_batch(s, micro)?;
            step_wait += wait.elapsed().as_secs_f64();
            // Gradients are reduced across ranks in the last micro-batch's backward pass only.
            let last = micro + 1 == accumulation;
            let (model, reducer, backend) = (&self.model, &mut self.reducer, &mut self.backend);
            let loss = crate::shim::autocast(self.autocast, || {
                model.forward_backward(&inputs, scale, args.activation_checkpoint, &mut |segment| {
                    if last {
                        reducer.segment_done(segment, backend)
                    } else {
                        Ok(())
                    }
                })
            })
            .and_then(|loss| loss)
            .map_err(|e| anyhow::anyhow!("step {s}: {e}"))?;
            loss_total += loss * scale;
            step_wait += self.fetch_ahead(s, micro, last)?;
        }
        // The loss, the time spent waiting for data and rank 0's checkpoint decision (1/world when it
        // saves), averaged over the ranks.
        #[allow(clippy::cast_possible_truncation)]
        let wait = Tensor::from_slice(&[step_wait as f32, f32::from(u8::from(save_after))])
            .to_device(self.device);
        let stats = Tensor::cat(&[loss_total.reshape([1]), wait], 0);
        self.reducer
            .finish(&mut self.backend)
            .and_then(|()| self.backend.all_reduce_avg(&stats))
            .map_err(|e| anyhow::anyhow!("step {s}: {e}"))?;
        // One host synchronisation per step: the loss and the gradient norm are read together.
        let loss = stats.double_value(&[0]);
        let norm = self.optimizer.grad_norm();
        let grad_norm = norm.double_value(&[]);
        let lr = args.lr * self.schedule.factor(s);
        if args.skip_nan_inf && !grad_norm.is_finite() {
            state.skipped_steps += 1;
        } else {
            self.optimizer.clip(&norm, args.max_norm);
            self.optimizer.step(lr);
        }
        state.step += 1;
        state.optimizer_steps = self.optimizer.steps_taken();
        state.samples_consumed = state.step * global;
        state.tokens += global * u64::from(args.seq_len);
        let report = StepReport {
            step: state.step,
            loss,
            grad_norm,
            lr,
            next_lr: args.lr * self.schedule.factor(s + 1),
            skipped_steps: state.skipped_steps,
            tokens: state.tokens,
        };
        Ok((
            report,
            stats.double_value(&[1]),
            stats.double_value(&[2]) > 0.0,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use clap::Parser;

    use super::*;

    /// Issue 16: `--training.device cuda` is the local rank's GPU, as when no device is named.
    #[test]
    fn cuda_means_the_local_ranks_gpu() {
        let args = |device: &[&str]| {
            let mut argv = vec![
                "flame-train",
                "--model.config",
                "c.json",
                "--data-endpoint",
                "unix:///s",
                "--data-job",
                "j.toml",
                "--training.steps",
                "1",
            ];
            argv.extend(device);
            Args::try_parse_from(argv).unwrap()
        };
        let launch = Launch {
            rank: 5,
            world_size: 8,
            local_rank: 1,
            ..Launch::single()
        };
        let on = |a: &[&str], cuda: bool| device(&args(a), &launch, cuda).unwrap();
        assert_eq!(on(&["--training.device", "cuda"], true), Device::Cuda(1));
        assert_eq!(on(&[], true), Device::Cuda(1));
        assert_eq!(on(&["--training.device", "cuda:3"], true), Device::Cuda(3));
        assert_eq!(on(&[], false), Device::Cpu);
        assert_eq!(on(&["--training.device", "cpu"], true), Device::Cpu);
        assert!(device(&args(&["--training.device", "tpu"]), &launch, true).is_err());
    }
}
