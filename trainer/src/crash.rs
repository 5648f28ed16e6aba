//! Crash points, for the tests that kill a run at every stage of a step: with
//! `FLAME_TRAIN_CRASH_AT=POINT:STEP` in the environment, the process sends itself SIGKILL when it reaches
//! `POINT` at step `STEP` (nothing is flushed or cleaned up, as when an operator or the OOM killer ends
//! it). Without the variable, a point is one comparison.
//!
//! Stall points, for the tests of the collective timeout (`dist/watchdog.rs`): with
//! `FLAME_TRAIN_STALL_AT=RANK:POINT:STEP:SECONDS`, rank `RANK` (the `RANK` variable, else 0) stops for
//! `SECONDS` when it reaches `POINT` at step `STEP`, as a hung rank or a slow checkpoint write does.

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

/// Kills this process if `FLAME_TRAIN_CRASH_AT` names `point` at `step`; stalls it if
/// `FLAME_TRAIN_STALL_AT` names this rank, `point` and `step`.
pub fn reached(point: Point, step: u64) {
    crash_if_named(point, step);
    stall_if_named(point, step);
}

fn crash_if_named(point: Point, step: u64) {
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

fn stall_if_named(point: Point, step: u64) {
    static TARGET: OnceLock<Option<(String, u64, std::time::Duration)>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let value = std::env::var("FLAME_TRAIN_STALL_AT").ok()?;
        let mut fields = value.split(':');
        let (rank, name, step, seconds) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let this_rank = std::env::var("RANK").unwrap_or_else(|_| "0".into());
        (rank == this_rank).then_some(())?;
        let seconds = std::time::Duration::from_secs_f64(seconds.parse().ok()?);
        Some((name.to_owned(), step.parse().ok()?, seconds))
    });
    if let Some((_, _, seconds)) = target
        .as_ref()
        .filter(|(name, at, _)| name == point.name() && *at == step)
    {
        std::thread::sleep(*seconds);
    }
}
