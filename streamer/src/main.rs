//! `flame-stream`: not built yet (see the crate docs).
use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "flame-stream: the streaming server is not implemented yet (issue #{})",
        flame_streamer::TRACKING_ISSUE
    );
    ExitCode::FAILURE
}
