//! Crash points, for the tests that kill a run at every stage of a step: with
//! `FLAME_TRAIN_CRASH_AT=POINT:STEP` in the environment, the process sends itself SIGKILL when it reaches
//! `POINT` at step `STEP` (nothing is flushed or cleaned up, as when an operator or the OOM killer ends
//! it). Without the variable, a point is one comparison.

use std::sync::OnceLock;

/// Where a step can be cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The step's metrics are written; its checkpoint is not.
    Logged,
    /// The checkpoint's model file is written; the rest is not.
    CheckpointModel,
    /// Every checkpoint file is written and fsynced, not yet renamed into place.
    CheckpointWritten,
    /// The checkpoint is renamed into place; older ones are not yet removed.
    CheckpointPublished,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Self::Logged => "logged",
            Self::CheckpointModel => "checkpoint-model",
            Self::CheckpointWritten => "checkpoint-written",
            Self::CheckpointPublished => "checkpoint-published",
        }
    }
}

/// Kills this process if `FLAME_TRAIN_CRASH_AT` names `point` at `step`.
pub fn reached(point: Point, step: u64) {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let value = std::env::var("FLAME_TRAIN_CRASH_AT").ok()?;
        let (name, step) = value.rsplit_once(':')?;
        Some((name.to_owned(), step.parse().ok()?))
    });
    if target
        .as_ref()
        .is_some_and(|(name, at)| name == point.name() && *at == step)
    {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
