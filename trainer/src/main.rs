//! `flame-train`: trains flame's transformer configs from batches served by flame-stream.
use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "flame-train: the training loop is not wired yet (issue #5); the model and schedule are in the library"
    );
    ExitCode::FAILURE
}
