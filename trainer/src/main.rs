//! `flame-train`: trains flame's transformer configs from batches served by flame-stream.
use std::process::ExitCode;

use clap::Parser;
use flame_trainer::train::{Args, run};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(summary) => {
            if args.enable_checkpoint {
                eprintln!("flame-train: exported to {}", summary.export.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flame-train: {e:#}");
            ExitCode::FAILURE
        }
    }
}
