//! `flame-train`: not built yet. The trainer (tch + libtorch) is issue #5; it stays out of the default
//! workspace members until it builds offline, so `cargo build` never needs libtorch.
use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("flame-train: the trainer is not implemented yet (issue #5)");
    ExitCode::FAILURE
}
