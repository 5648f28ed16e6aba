//! A tokenizing run: inputs → pipeline → shards → manifest.
//!
//! Shards are written into `OUT/.staging/`, moved into `OUT/` once every one is complete, and
//! `manifest.json` is written last: a directory with a manifest is a finished run, and a failed run
//! leaves nothing that looks valid.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use flame_formats::manifest::{
    MANIFEST_FILE_NAME, MANIFEST_VERSION, Manifest, ShardFormat, SourceEntry, TokenizerIdentity,
};
use flame_formats::packed::cu_seqlens_prefix;
use flame_formats::prefix::{bin_path, idx_path};
use flame_formats::{TokenDtype, publish};
use serde::Serialize;

use crate::config::Config;
use crate::pipeline::{self, Item};
use crate::progress::Progress;
use crate::shard::{Layout, ShardSink};
use crate::tokenize::TextEncoder;

const STAGING: &str = ".staging";

/// What a run did, for people and for `--json`.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// The output directory.
    pub output: String,
    /// Whether a complete output was found and left as it was.
    pub already_complete: bool,
    /// Documents written.
    pub documents: u64,
    /// Tokens of those documents.
    pub document_tokens: u64,
    /// Tokens stored (padding included, dropped tail excluded).
    pub stored_tokens: u64,
    /// Sequences stored (windows, for packed output).
    pub sequences: u64,
    /// Shards written.
    pub shards: usize,
    /// Bad records skipped (`--skip-bad-records`).
    pub bad_records: u64,
    /// Input files read.
    pub input_files: usize,
    /// Their total size.
    pub input_bytes: u64,
    /// UTF-8 text bytes tokenized.
    pub text_bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Text throughput.
    pub text_mb_per_s: f64,
    /// Token throughput.
    pub tokens_per_s: f64,
}

/// Runs `config`; `quiet` hides the progress bar.
pub fn run(config: &Config, quiet: bool) -> anyhow::Result<RunSummary> {
    let encoder = Arc::new(TextEncoder::load(
        &config.tokenizer,
        config.bos,
        config.append_eod,
        config.parse_special_tokens,
    )?);
    let info = encoder.info().clone();
    let dtype = TokenDtype::for_vocab_size(info.vocab_size);
    let dir = &config.output_dir;
    let input_bytes: u64 = config.inputs.iter().map(|f| f.num_bytes).sum();

    if dir.join(MANIFEST_FILE_NAME).is_file() {
        if !config.overwrite {
            tracing::info!(output = %dir.display(), "Output is already complete; nothing to do (--overwrite to redo it).");
            return already_complete(config, input_bytes);
        }
        std::fs::remove_file(dir.join(MANIFEST_FILE_NAME))
            .with_context(|| format!("{}: remove old manifest", dir.display()))?;
    }
    let staging = prepare_output_dir(dir)?;

    let result = tokenize_into(config, &encoder, dtype, &staging, input_bytes, quiet);
    let (sink, counters, seconds) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    publish_shards(&staging, dir, &sink.shards)?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        format: if sink.packing.is_some() {
            ShardFormat::Packed
        } else {
            ShardFormat::Megatron
        },
        dtype,
        packing: sink.packing,
        tokenizer: TokenizerIdentity {
            name: Some(info.name.clone()),
            sha256: info.sha256.clone(),
            vocab_size: info.vocab_size,
            bos_id: info.bos_id,
            eos_id: info.eos_id,
        },
        totals: sink.totals,
        shards: sink.shards,
        sources: config
            .inputs
            .iter()
            .map(|f| SourceEntry {
                uri: f.path.display().to_string(),
                bytes: Some(f.num_bytes),
                sha256: None,
            })
            .collect(),
        parameters: config.manifest_parameters(),
        created_by: format!("flame-prep {}", env!("CARGO_PKG_VERSION")),
    };
    manifest.write(dir)?;
    #[allow(clippy::cast_precision_loss)] // rates for people
    let rate = |n: u64| n as f64 / seconds.max(1e-9);
    Ok(RunSummary {
        output: dir.display().to_string(),
        already_complete: false,
        documents: manifest.totals.documents,
        document_tokens: sink.num_document_tokens,
        stored_tokens: manifest.totals.tokens,
        sequences: manifest.totals.sequences,
        shards: manifest.shards.len(),
        bad_records: counters.bad_records,
        input_files: config.inputs.len(),
        input_bytes,
        text_bytes: counters.text_bytes,
        seconds,
        text_mb_per_s: rate(counters.text_bytes) / 1e6,
        tokens_per_s: rate(sink.num_document_tokens),
    })
}

fn already_complete(config: &Config, input_bytes: u64) -> anyhow::Result<RunSummary> {
    let dir = &config.output_dir;
    let manifest = Manifest::load(dir)?;
    Ok(RunSummary {
        output: dir.display().to_string(),
        already_complete: true,
        documents: manifest.totals.documents,
        document_tokens: manifest.totals.tokens - manifest.packing.map_or(0, |p| p.pad_tokens),
        stored_tokens: manifest.totals.tokens,
        sequences: manifest.totals.sequences,
        shards: manifest.shards.len(),
        bad_records: 0,
        input_files: config.inputs.len(),
        input_bytes,
        text_bytes: 0,
        seconds: 0.0,
        text_mb_per_s: 0.0,
        tokens_per_s: 0.0,
    })
}

/// Creates `dir`, clears shards of an unfinished earlier run, and returns a fresh staging directory.
fn prepare_output_dir(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: create output directory", dir.display()))?;
    remove_shards(dir)?;
    let staging = dir.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("{}: remove", staging.display()))?;
    }
    std::fs::create_dir(&staging).with_context(|| format!("{}: create", staging.display()))?;
    Ok(staging)
}

/// Moves every complete shard from `staging` into `dir` and removes `staging`.
fn publish_shards(
    staging: &Path,
    dir: &Path,
    shards: &[flame_formats::manifest::ShardEntry],
) -> anyhow::Result<()> {
    for shard in shards {
        let prefix = staging.join(&shard.prefix);
        let mut prefixes = vec![prefix.clone()];
        if shard.cu_seqlens.is_some() {
            prefixes.push(cu_seqlens_prefix(&prefix));
        }
        for from in prefixes {
            let to = dir.join(from.file_name().expect("a shard prefix"));
            publish(&bin_path(&from), &bin_path(&to))?;
            publish(&idx_path(&from), &idx_path(&to))?;
        }
    }
    std::fs::remove_dir(staging).with_context(|| format!("{}: remove", staging.display()))
}

#[derive(Default)]
struct Counters {
    bad_records: u64,
    text_bytes: u64,
}

fn tokenize_into(
    config: &Config,
    encoder: &Arc<TextEncoder>,
    dtype: TokenDtype,
    staging: &Path,
    input_bytes: u64,
    quiet: bool,
) -> anyhow::Result<(crate::shard::SinkSummary, Counters, f64)> {
    let layout = match config.tail_policy(encoder.info().eos_id) {
        Some((seq_len, tail)) => Layout::Packed { seq_len, tail },
        None => Layout::Megatron,
    };
    let mut sink = ShardSink::create(staging, dtype, layout, config.shard_tokens)?;
    let mut progress = Progress::new(input_bytes, quiet);
    let mut counters = Counters::default();
    let (mut num_documents, mut num_tokens) = (0u64, 0u64);
    let file_starts: Vec<u64> = config
        .inputs
        .iter()
        .scan(0, |acc, f| Some(std::mem::replace(acc, *acc + f.num_bytes)))
        .collect();
    pipeline::run(
        &config.inputs,
        config.text_key.as_deref(),
        encoder,
        config.workers,
        |file_index, item| {
            match item {
                Item::Document {
                    tokens,
                    num_text_bytes,
                    ..
                } => {
                    sink.add_document(&tokens)?;
                    num_documents += 1;
                    num_tokens += tokens.len() as u64;
                    counters.text_bytes += num_text_bytes as u64;
                }
                Item::Bad(bad) if config.skip_bad_records => {
                    if counters.bad_records < 10 {
                        tracing::warn!(%bad, "Skipping a bad record.");
                    }
                    counters.bad_records += 1;
                }
                Item::Bad(bad) => {
                    return Err(anyhow::Error::new(bad).context(
                        "bad record (rerun with --skip-bad-records to skip such records)",
                    ));
                }
            }
            progress.update(
                file_starts[file_index],
                num_documents,
                num_tokens,
                counters.text_bytes,
            );
            Ok(())
        },
    )?;
    progress.finish();
    let seconds = progress.elapsed_s();
    Ok((sink.finish()?, counters, seconds))
}

/// Removes shard files of an earlier, unfinished run (never anything else).
fn remove_shards(dir: &Path) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: read directory", dir.display()))?
    {
        let entry = entry.with_context(|| format!("{}: read directory", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("shard_")
            && [".bin", ".idx", ".tmp"]
                .iter()
                .any(|ext| name.ends_with(ext))
        {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("{}: remove stale shard", entry.path().display()))?;
        }
    }
    Ok(())
}
