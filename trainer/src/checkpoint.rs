//! Checkpoints: `step-N/` under `--job.dump_folder`/checkpoint, holding the model, the optimizer state and
//! the [`TrainState`] (the data cursor and the job's fingerprint), written to a temporary directory,
//! fsynced and renamed into place (see [`save`]).

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tch::nn;

use crate::cli::Args;
use crate::crash::{self, Point};
use crate::optim::AdamW;

/// The training state a checkpoint holds besides tensors.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken: the next step's number, and the data cursor (the next step's samples
    /// start at `step × global_batch_size` in the job).
    pub step: u64,
    /// Tokens trained on.
    pub tokens: u64,
    /// Steps whose update was skipped (`--training.skip_nan_inf`).
    pub skipped_steps: u64,
    /// Updates the optimizer has made (its bias correction).
    pub optimizer_steps: i64,
    /// The fingerprint of the data job the steps were taken on.
    pub data_fingerprint: String,
    /// Samples of the job consumed: `step × global_batch_size`.
    pub samples_consumed: u64,
}

fn checkpoint_dir(args: &Args) -> PathBuf {
    args.dump_folder.join("checkpoint")
}

/// The steps of the checkpoints saved, in order.
pub fn steps_saved(args: &Args) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(checkpoint_dir(args))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    steps
}

/// Writes `step-N/` durably: its files into `.step-N.partial/`, each fsynced, then the directory,
/// renamed into place and the checkpoint directory fsynced (`flame_formats::publish`), so that a crash
/// or power loss at any moment leaves every `step-*` complete. Older checkpoints beyond
/// `--checkpoint.keep_latest_k` are removed only after.
///
/// # Errors
/// When a file cannot be written, synced or renamed.
pub fn save(
    args: &Args,
    vs: &nn::VarStore,
    optimizer: &AdamW,
    state: &TrainState,
) -> anyhow::Result<()> {
    let root = checkpoint_dir(args);
    let context = |what: &str| format!("checkpoint {}: {what}", root.display());
    std::fs::create_dir_all(&root).with_context(|| context("creating it"))?;
    let tmp = root.join(format!(".step-{}.partial", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| context("creating the partial directory"))?;
    vs.save(tmp.join("model.safetensors"))?;
    crash::reached(Point::CheckpointModel, state.step);
    let opt = optimizer.state();
    tch::Tensor::write_safetensors(&opt, tmp.join("optimizer.safetensors"))?;
    std::fs::write(
        tmp.join("train_state.json"),
        serde_json::to_vec_pretty(state)?,
    )?;
    for file in [
        "model.safetensors",
        "optimizer.safetensors",
        "train_state.json",
        "",
    ] {
        // The files, then the directory that names them.
        let path = tmp.join(file);
        File::open(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| context(&format!("fsync {}", path.display())))?;
    }
    crash::reached(Point::CheckpointWritten, state.step);
    let dest = root.join(format!("step-{}", state.step));
    // A checkpoint of the same step from an earlier run is replaced only once this one is complete.
    let old = root.join(format!(".step-{}.old", state.step));
    if dest.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&dest, &old).with_context(|| context("moving the earlier checkpoint"))?;
    }
    flame_formats::publish(&tmp, &dest)?;
    let _ = std::fs::remove_dir_all(&old);
    crash::reached(Point::CheckpointPublished, state.step);
    if args.keep_latest_k > 0 {
        let steps = steps_saved(args);
        for old in &steps[..steps.len().saturating_sub(args.keep_latest_k)] {
            std::fs::remove_dir_all(root.join(format!("step-{old}")))?;
        }
    }
    Ok(())
}

/// Reads `step-N/` into `vs` and `optimizer` and returns its train state.
pub fn load(
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

/// The state a run starts from: fresh on `fingerprint`'s job, or the checkpoint that
/// `--checkpoint.load_step` names (-1: the latest) loaded into `vs` and `optimizer`.
///
/// # Errors
/// When there is no such checkpoint, it cannot be read, or it was trained on another data job
/// (resuming would change the stream).
pub fn resume(
    args: &Args,
    vs: &mut nn::VarStore,
    optimizer: &mut AdamW,
    fingerprint: &str,
) -> anyhow::Result<TrainState> {
    let Some(requested) = args.load_step else {
        return Ok(TrainState {
            step: 0,
            tokens: 0,
            skipped_steps: 0,
            optimizer_steps: 0,
            data_fingerprint: fingerprint.to_owned(),
            samples_consumed: 0,
        });
    };
    let step = if requested < 0 {
        *steps_saved(args)
            .last()
            .context("--checkpoint.load_step -1: no checkpoint saved yet")?
    } else {
        u64::try_from(requested)?
    };
    let state = load(args, step, vs, optimizer)?;
    if state.data_fingerprint != fingerprint {
        bail!(
            "checkpoint step-{step} was trained on data job {}, --data-job is {fingerprint}: resuming would change the stream",
            state.data_fingerprint,
        );
    }
    Ok(state)
}
