//! A tokenizing run: inputs → pipeline → shards → manifest, resumable after a crash.
//!
//! The shard in progress is written in `OUT/.staging/`. Each full shard is renamed into `OUT/`, then
//! `OUT/.flame-prep-journal.json` is replaced atomically with where the input stands, the counters and
//! the writer's carry-over. A rerun of the same command (same inputs, tokenizer and parameters, by
//! fingerprint) skips what the journal covers and continues, producing exactly the bytes of an
//! uninterrupted run. `manifest.json` is written last: a directory with a manifest is a finished run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use flame_formats::manifest::{
    MANIFEST_FILE_NAME, MANIFEST_VERSION, Manifest, ShardFormat, SourceEntry, TokenizerIdentity,
    Totals,
};
use flame_formats::packed::cu_seqlens_prefix;
use flame_formats::prefix::{bin_path, idx_path};
use flame_formats::{TokenDtype, write_atomic};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::config::Config;
use crate::pipeline::{self, Item, Position};
use crate::progress::Progress;
use crate::restream::{DocumentSet, restream};
use crate::shard::{Layout, ShardSink, SinkState};
use crate::source::BadRecord;
use crate::tokenize::{TextEncoder, TokenizerInfo};

const STAGING: &str = ".staging";
const JOURNAL: &str = ".flame-prep-journal.json";
/// 2: empty texts are documents (issue 16). A version-1 journal may have skipped them as bad records,
/// so its run cannot be continued into the same bytes.
const JOURNAL_VERSION: u32 = 2;
/// Test hook: abort (as a kill -9 would) after adding this many documents in this process.
const ABORT_HOOK: &str = "FLAME_PREP_ABORT_AFTER_DOCUMENTS";

/// What a run did, for people and for `--json`.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// The output directory.
    pub output: String,
    /// Whether a complete output was found and left as it was.
    pub already_complete: bool,
    /// Whether this run continued an interrupted one.
    pub resumed: bool,
    /// Documents written.
    pub documents: u64,
    /// Those of them whose text was empty.
    pub empty_documents: u64,
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
    /// Wall time of this process.
    pub seconds: f64,
    /// Text throughput of this process.
    pub text_mb_per_s: f64,
    /// Token throughput of this process.
    pub tokens_per_s: f64,
}

/// The resume point, rewritten at every shard boundary.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    version: u32,
    fingerprint: String,
    position: Position,
    bad_records: u64,
    /// Absent from version 1, which is refused by version rather than as unreadable.
    #[serde(default)]
    empty_documents: u64,
    text_bytes: u64,
    sink: SinkState,
}

fn identity(info: &TokenizerInfo) -> TokenizerIdentity {
    TokenizerIdentity {
        name: Some(info.name.clone()),
        sha256: info.sha256.clone(),
        vocab_size: info.vocab_size,
        bos_id: info.bos_id,
        eos_id: info.eos_id,
    }
}

/// Runs `config`; `quiet` hides the progress bar.
pub fn run(config: &Config, quiet: bool) -> anyhow::Result<RunSummary> {
    if let (Some(seed), None) = (config.shuffle_seed, config.partial) {
        return run_shuffled(config, seed, quiet);
    }
    let dir = &config.output_dir;
    let input_bytes: u64 = config.inputs.iter().map(|f| f.num_bytes).sum();
    if dir.join(MANIFEST_FILE_NAME).is_file() {
        if !config.overwrite {
            tracing::info!(output = %dir.display(), "Output is already complete; nothing to do (--overwrite to redo it).");
            return already_complete(config, input_bytes);
        }
        std::fs::remove_file(dir.join(MANIFEST_FILE_NAME))
            .with_context(|| format!("{}: remove old manifest", dir.display()))?;
        remove_journal_and_shards(dir, &[])?;
    }
    // With nothing to resume, reading starts at the beginning: the reader decodes the first batches
    // while the tokenizer loads.
    let early_reader = (!dir.join(JOURNAL).is_file()).then(|| {
        pipeline::Reader::spawn(
            config.inputs.clone(),
            config.text_key.clone(),
            Position::default(),
        )
    });
    let encoder = Arc::new(TextEncoder::load(
        &config.tokenizer,
        config.bos,
        config.append_eod,
        config.parse_special_tokens,
    )?);
    let info = encoder.info().clone();
    let dtype = TokenDtype::for_vocab_size(info.vocab_size);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: create output directory", dir.display()))?;
    let (journal, resumed) = start_journal(dir, fingerprint(config, &info, dtype))?;
    let staging = dir.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("{}: remove", staging.display()))?;
    }
    std::fs::create_dir(&staging).with_context(|| format!("{}: create", staging.display()))?;

    let result = tokenize_into(
        config,
        early_reader,
        &encoder,
        dtype,
        journal,
        input_bytes,
        quiet,
    );
    let _ = std::fs::remove_dir_all(&staging);
    let (sink, counters, seconds) = match result {
        Ok(done) => done,
        Err(e) => {
            if e.chain().any(|c| c.downcast_ref::<BadRecord>().is_some()) {
                // This input cannot succeed with these parameters: leave nothing behind.
                remove_journal_and_shards(dir, &[])?;
            }
            return Err(e);
        }
    };
    let manifest = manifest(
        config,
        identity(&info),
        dtype,
        sink.packing,
        Totals {
            empty_documents: counters.empty_documents,
            ..sink.totals
        },
        sink.shards,
    );
    manifest.write(dir)?;
    let _ = std::fs::remove_file(dir.join(JOURNAL));
    #[allow(clippy::cast_precision_loss)] // rates for people
    let rate = |n: u64| n as f64 / seconds.max(1e-9);
    Ok(RunSummary {
        output: dir.display().to_string(),
        already_complete: false,
        resumed,
        documents: manifest.totals.documents,
        empty_documents: manifest.totals.empty_documents,
        document_tokens: sink.num_document_tokens,
        stored_tokens: manifest.totals.tokens,
        sequences: manifest.totals.sequences,
        shards: manifest.shards.len(),
        bad_records: counters.bad_records,
        input_files: config.inputs.len(),
        input_bytes,
        text_bytes: counters.text_bytes,
        seconds,
        text_mb_per_s: rate(counters.text_bytes_here) / 1e6,
        tokens_per_s: rate(counters.tokens_here),
    })
}

/// The journal to go on from (`true`: a run to resume) or a fresh one, with the shards of any other
/// run removed.
fn start_journal(dir: &Path, fingerprint: String) -> anyhow::Result<(Journal, bool)> {
    let journal = load_journal(dir, &fingerprint);
    let resumed = journal.is_some();
    let journal = journal.unwrap_or(Journal {
        version: JOURNAL_VERSION,
        fingerprint,
        position: Position::default(),
        bad_records: 0,
        empty_documents: 0,
        text_bytes: 0,
        sink: SinkState::default(),
    });
    remove_journal_and_shards(
        dir,
        &journal
            .sink
            .shards
            .iter()
            .map(|s| s.prefix.clone())
            .collect::<Vec<_>>(),
    )?;
    if resumed {
        tracing::info!(
            shards = journal.sink.shards.len(),
            documents = journal.sink.num_documents,
            file = journal.position.file_index,
            record = journal.position.record,
            "Resuming an interrupted run."
        );
    }
    Ok((journal, resumed))
}

/// The manifest of a finished run.
fn manifest(
    config: &Config,
    tokenizer: TokenizerIdentity,
    dtype: TokenDtype,
    packing: Option<flame_formats::manifest::Packing>,
    totals: Totals,
    shards: Vec<flame_formats::manifest::ShardEntry>,
) -> Manifest {
    let eos_id = tokenizer.eos_id;
    Manifest {
        version: MANIFEST_VERSION,
        format: if packing.is_some() {
            ShardFormat::Packed
        } else {
            ShardFormat::Megatron
        },
        dtype,
        packing,
        tokenizer,
        totals,
        shards,
        sources: config
            .inputs
            .iter()
            .map(|f| SourceEntry {
                uri: f.uri.clone(),
                bytes: Some(f.num_bytes),
                sha256: None,
            })
            .collect(),
        parameters: {
            let mut parameters = config.manifest_parameters(eos_id);
            if let Some(partial) = config.partial {
                parameters.insert("partial".into(), serde_json::json!(partial));
            }
            parameters
        },
        created_by: format!("flame-prep {}", env!("CARGO_PKG_VERSION")),
    }
}

/// `--shuffle`: tokenize in input order into `.unshuffled/` (an ordinary, resumable run), then write the
/// documents in the seeded permutation's order with the final layout, exactly as `merge` would.
fn run_shuffled(config: &Config, seed: u64, quiet: bool) -> anyhow::Result<RunSummary> {
    let dir = &config.output_dir;
    let input_bytes: u64 = config.inputs.iter().map(|f| f.num_bytes).sum();
    if dir.join(MANIFEST_FILE_NAME).is_file() {
        if !config.overwrite {
            return already_complete(config, input_bytes);
        }
        std::fs::remove_file(dir.join(MANIFEST_FILE_NAME))
            .with_context(|| format!("{}: remove old manifest", dir.display()))?;
    }
    let mut ordered = config.clone();
    ordered.output_dir = dir.join(".unshuffled");
    (ordered.packing, ordered.shuffle_seed, ordered.overwrite) = (None, None, config.overwrite);
    let first = run(&ordered, quiet)?;
    let unshuffled = Manifest::load(&ordered.output_dir)?;
    let set = DocumentSet::open(&unshuffled.shard_prefixes(&ordered.output_dir))?;
    remove_journal_and_shards(dir, &[])?;
    let layout = match config.tail_policy(unshuffled.tokenizer.eos_id) {
        Some((seq_len, tail)) => Layout::Packed { seq_len, tail },
        None => Layout::Megatron,
    };
    let sink = restream(
        &set,
        Some(seed),
        dir,
        &dir.join(STAGING),
        unshuffled.dtype,
        layout,
        config.shard_tokens,
    )?;
    drop(set);
    let manifest = manifest(
        config,
        unshuffled.tokenizer.clone(),
        unshuffled.dtype,
        sink.packing,
        Totals {
            empty_documents: unshuffled.totals.empty_documents,
            ..sink.totals
        },
        sink.shards,
    );
    manifest.write(dir)?;
    std::fs::remove_dir_all(&ordered.output_dir)
        .with_context(|| format!("{}: remove", ordered.output_dir.display()))?;
    Ok(RunSummary {
        output: dir.display().to_string(),
        stored_tokens: manifest.totals.tokens,
        sequences: manifest.totals.sequences,
        shards: manifest.shards.len(),
        document_tokens: sink.num_document_tokens,
        ..first
    })
}

fn already_complete(config: &Config, input_bytes: u64) -> anyhow::Result<RunSummary> {
    let dir = &config.output_dir;
    let manifest = Manifest::load(dir)?;
    Ok(RunSummary {
        output: dir.display().to_string(),
        already_complete: true,
        resumed: false,
        documents: manifest.totals.documents,
        empty_documents: manifest.totals.empty_documents,
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

/// What makes two runs produce the same bytes: parameters, inputs (path and size), tokenizer, dtype.
fn fingerprint(config: &Config, info: &TokenizerInfo, dtype: TokenDtype) -> String {
    let inputs: Vec<(String, u64)> = config
        .inputs
        .iter()
        .map(|f| (f.uri.clone(), f.num_bytes))
        .collect();
    let identity = serde_json::json!({
        "parameters": config.manifest_parameters(info.eos_id),
        "partial": config.partial,
        "inputs": inputs,
        "tokenizer": info.sha256,
        "dtype": dtype,
        "flame_prep": env!("CARGO_PKG_VERSION"),
    });
    hex::encode(sha2::Sha256::digest(identity.to_string().as_bytes()))
}

/// The journal of an interrupted run of the same job, if there is a usable one.
fn load_journal(dir: &Path, fingerprint: &str) -> Option<Journal> {
    let path = dir.join(JOURNAL);
    let Ok(bytes) = std::fs::read(&path) else {
        return None;
    };
    let journal: Journal = match serde_json::from_slice(&bytes) {
        Ok(journal) => journal,
        Err(e) => {
            tracing::warn!(journal = %path.display(), error = %e, "Unreadable journal; starting over.");
            return None;
        }
    };
    if journal.version != JOURNAL_VERSION || journal.fingerprint != fingerprint {
        tracing::info!(journal = %path.display(), "The journal belongs to a different job (inputs, tokenizer or parameters changed); starting over.");
        return None;
    }
    for shard in &journal.sink.shards {
        let prefix = dir.join(&shard.prefix);
        let mut files = vec![
            (bin_path(&prefix), shard.bin.bytes),
            (idx_path(&prefix), shard.idx.bytes),
        ];
        if let Some(cu) = &shard.cu_seqlens {
            let cu_prefix = cu_seqlens_prefix(&prefix);
            files.push((bin_path(&cu_prefix), cu.bin.bytes));
            files.push((idx_path(&cu_prefix), cu.idx.bytes));
        }
        for (file, bytes) in files {
            if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(bytes) {
                tracing::warn!(file = %file.display(), "A journaled shard is missing or has the wrong size; starting over.");
                return None;
            }
        }
    }
    Some(journal)
}

/// Removes the journal (unless shards are kept) and every shard file not named in `keep`.
fn remove_journal_and_shards(dir: &Path, keep: &[String]) -> anyhow::Result<()> {
    if keep.is_empty() {
        let _ = std::fs::remove_file(dir.join(JOURNAL));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: read directory", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_shard_file = name.starts_with("shard_")
            && [".bin", ".idx", ".tmp"]
                .iter()
                .any(|ext| name.ends_with(ext));
        let stem = name.split('.').next().unwrap_or_default();
        let stem = stem.strip_suffix("_cu_seqlens").unwrap_or(stem);
        if is_shard_file && !keep.iter().any(|k| k == stem) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("{}: remove stale shard file", entry.path().display()))?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Counters {
    bad_records: u64,
    empty_documents: u64,
    text_bytes: u64,
    text_bytes_here: u64,
    tokens_here: u64,
}

/// Tokenizes into `config.output_dir` from where `journal` says, with `early_reader` if it started
/// there.
fn tokenize_into(
    config: &Config,
    early_reader: Option<pipeline::Reader>,
    encoder: &Arc<TextEncoder>,
    dtype: TokenDtype,
    mut journal: Journal,
    input_bytes: u64,
    quiet: bool,
) -> anyhow::Result<(crate::shard::SinkSummary, Counters, f64)> {
    // A part of a multi-machine job is document-level; `flame-prep merge` packs the joined stream.
    let layout = match config.tail_policy(encoder.info().eos_id) {
        Some((seq_len, tail)) if config.partial.is_none() => Layout::Packed { seq_len, tail },
        _ => Layout::Megatron,
    };
    let dir: PathBuf = config.output_dir.clone();
    let staging = dir.join(STAGING);
    let resumed_documents = journal.sink.num_documents;
    let mut sink = ShardSink::new(
        &dir,
        &staging,
        dtype,
        layout,
        config.shard_tokens,
        std::mem::take(&mut journal.sink),
    )?;
    let mut progress = Progress::new(input_bytes, quiet, config.live_progress.clone());
    let mut counters = Counters {
        bad_records: journal.bad_records,
        empty_documents: journal.empty_documents,
        text_bytes: journal.text_bytes,
        ..Counters::default()
    };
    let abort_after: Option<u64> = std::env::var(ABORT_HOOK).ok().and_then(|v| v.parse().ok());
    // Documents added in this process (for the abort hook) and in the whole job (for progress).
    let (mut num_documents_here, mut num_documents) = (0u64, resumed_documents);
    let file_starts: Vec<u64> = config
        .inputs
        .iter()
        .scan(0, |acc, f| Some(std::mem::replace(acc, *acc + f.num_bytes)))
        .collect();
    let reader = match early_reader {
        Some(reader) if reader.start() == journal.position => reader,
        _ => pipeline::Reader::spawn(
            config.inputs.clone(),
            config.text_key.clone(),
            journal.position,
        ),
    };
    pipeline::run(
        &reader,
        encoder,
        config.workers,
        |position, item, file_bytes_read| {
            match item {
                Item::Document {
                    tokens,
                    num_text_bytes,
                    ..
                } => {
                    if sink.is_full() {
                        journal.sink = sink.rotate()?;
                        journal.position = position;
                        journal.bad_records = counters.bad_records;
                        journal.empty_documents = counters.empty_documents;
                        journal.text_bytes = counters.text_bytes;
                        let json =
                            serde_json::to_vec(&journal).expect("a journal always serializes");
                        write_atomic(&dir.join(JOURNAL), &json)?;
                    }
                    sink.add_document(&tokens)?;
                    num_documents_here += 1;
                    num_documents += 1;
                    counters.tokens_here += tokens.len() as u64;
                    counters.empty_documents += u64::from(num_text_bytes == 0);
                    counters.text_bytes += num_text_bytes as u64;
                    counters.text_bytes_here += num_text_bytes as u64;
                    if abort_after == Some(num_documents_here) {
                        std::process::abort();
                    }
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
                file_starts[position.file_index] + file_bytes_read,
                num_documents,
                counters.tokens_here,
                counters.text_bytes_here,
            );
            Ok(())
        },
    )?;
    progress.finish();
    let seconds = progress.elapsed_s();
    Ok((sink.finish()?, counters, seconds))
}
