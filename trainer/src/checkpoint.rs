//! Checkpoints: `step-N/` under `--job.dump_folder`/checkpoint, holding the model, the optimizer state and
//! the [`TrainState`] (the data cursor and the job's fingerprint), written to a temporary directory,
//! fsynced and renamed into place (see [`save`]).

use std::fs::File;
use std::path::{Path, PathBuf};

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
    /// For a job that streams raw datasets: each streamed dataset's cursor at `step`, which the data
    /// server is given on resume so that it continues without replaying the stream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream_cursors: Vec<(u32, flame_streamer::online::Cursor)>,
}

fn checkpoint_dir(args: &Args) -> PathBuf {
    args.dump_folder.join(&args.checkpoint_folder)
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
    remove_partials(&root).with_context(|| context("removing unfinished checkpoints"))?;
    let tmp = root.join(format!(".step-{}.partial", state.step));
    std::fs::create_dir_all(&tmp).with_context(|| context("creating the partial directory"))?;
    let weights_only = args.model_weights_only && state.step == args.steps;
    let files: &[&str] = if weights_only {
        let kind = args.export_dtype.kind();
        let mut weights: Vec<(String, tch::Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(name, t)| (name, t.to_kind(kind)))
            .collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        tch::Tensor::write_safetensors(&weights, tmp.join("model.safetensors"))?;
        &["model.safetensors", ""]
    } else {
        vs.save(tmp.join("model.safetensors"))?;
        crash::reached(Point::CheckpointModel, state.step);
        let opt = optimizer.state();
        tch::Tensor::write_safetensors(&opt, tmp.join("optimizer.safetensors"))?;
        std::fs::write(
            tmp.join("train_state.json"),
            serde_json::to_vec_pretty(state)?,
        )?;
        &[
            "model.safetensors",
            "optimizer.safetensors",
            "train_state.json",
            "",
        ]
    };
    for file in files {
        // The files, then the directory that names them.
        let path = tmp.join(file);
        File::open(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| context(&format!("fsync {}", path.display())))?;
    }
    crash::reached(Point::CheckpointWritten, state.step);
    publish_over(&tmp, &root.join(format!("step-{}", state.step)))
        .with_context(|| context("publishing"))?;
    crash::reached(Point::CheckpointPublished, state.step);
    if args.keep_latest_k > 0 {
        let steps = steps_saved(args);
        for old in &steps[..steps.len().saturating_sub(args.keep_latest_k)] {
            std::fs::remove_dir_all(root.join(format!("step-{old}")))?;
        }
    }
    Ok(())
}

/// Removes the `.step-*.partial` directories in `root`: checkpoints a killed run left unfinished (one
/// save runs at a time, so none is in progress).
fn remove_partials(root: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".step-") && name.ends_with(".partial") {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// Puts the complete directory `tmp` at `dest`, durably. Where `dest` exists (the same step saved by
/// an earlier run), the two are exchanged in one rename (`RENAME_EXCHANGE`), so that a `step-N` exists
/// at every moment, and the earlier one, now at `tmp`, is removed; on a file system that cannot
/// exchange, the earlier one is removed first.
fn publish_over(tmp: &Path, dest: &Path) -> anyhow::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    if dest.exists() {
        match renameat_with(CWD, tmp, CWD, dest, RenameFlags::EXCHANGE) {
            Ok(()) => {
                flame_formats::sync_parent(dest)?;
                std::fs::remove_dir_all(tmp)?;
                return Ok(());
            }
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => std::fs::remove_dir_all(dest)?,
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    }
    flame_formats::publish(tmp, dest)?;
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
    if dir.join("model.safetensors").exists() && !dir.join("train_state.json").exists() {
        bail!(context(
            "the weights alone (--checkpoint.model_weights_only): a run cannot resume from it"
        ));
    }
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
/// `--checkpoint.load_step` names (-1: the latest, or a fresh run when there is none yet) loaded into
/// `vs` and `optimizer`; with whether a checkpoint was loaded.
///
/// # Errors
/// When there is no such checkpoint, it cannot be read, or it was trained on another data job
/// (resuming would change the stream).
pub fn resume(
    args: &Args,
    vs: &mut nn::VarStore,
    optimizer: &mut AdamW,
    fingerprint: &str,
) -> anyhow::Result<(TrainState, bool)> {
    let fresh = TrainState {
        step: 0,
        tokens: 0,
        skipped_steps: 0,
        optimizer_steps: 0,
        data_fingerprint: fingerprint.to_owned(),
        samples_consumed: 0,
        stream_cursors: Vec::new(),
    };
    let Some(requested) = args.load_step else {
        return Ok((fresh, false));
    };
    let step = if requested < 0 {
        // torchtitan's -1: the latest checkpoint if there is one, else a fresh run (flame's recipe
        // passes it to its first run as to every later one).
        let Some(&latest) = steps_saved(args).last() else {
            return Ok((fresh, false));
        };
        latest
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
    Ok((state, true))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Issue 16: re-saving a step replaces the earlier checkpoint in one exchange (no moment without
    /// a `step-N`), and a killed run's unfinished checkpoints are cleared.
    #[test]
    fn a_checkpoint_replaces_an_earlier_one_of_its_step_in_one_exchange() {
        let root = tempfile::tempdir().unwrap();
        let (tmp, dest) = (
            root.path().join(".step-3.partial"),
            root.path().join("step-3"),
        );
        for (dir, text) in [(&dest, "earlier"), (&tmp, "new")] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("train_state.json"), text).unwrap();
        }
        std::fs::create_dir_all(root.path().join(".step-9.partial")).unwrap();
        publish_over(&tmp, &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("train_state.json")).unwrap(),
            "new"
        );
        assert!(!tmp.exists());
        remove_partials(root.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["step-3"]);
    }
}
