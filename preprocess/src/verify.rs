//! `flame-prep verify`: exit 0 only if every shard checks out.

use std::process::ExitCode;

use flame_formats::Corpus;

use crate::cli::VerifyArgs;

/// Runs `flame-prep verify`.
pub fn run(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let corpus = Corpus::open(&args.path)?;
    let report = corpus.verify()?;
    let has_manifest = corpus.manifest().is_some();
    if args.json {
        let json = serde_json::json!({
            "ok": true,
            "path": corpus.root().display().to_string(),
            "manifest": has_manifest,
            "shards": report.num_shards,
            "files_hashed": report.num_files,
            "bytes_hashed": report.num_bytes,
        });
        println!("{json}");
    } else {
        let what = if has_manifest {
            "checked against manifest.json"
        } else {
            "no manifest: format invariants only"
        };
        println!(
            "OK {}: {} shards, {} sequences, {} tokens ({what}; {} files, {} bytes hashed)",
            corpus.root().display(),
            report.num_shards,
            corpus.num_sequences(),
            corpus.num_tokens(),
            report.num_files,
            report.num_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
