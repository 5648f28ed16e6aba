//! `flame-prep merge`: join the parts of a job tokenized on several machines.
//!
//! Each part (`--num-shards K --shard-index I`) holds document-level shards of a contiguous slice of the
//! inputs. Merging streams every document, in part order, through the same [`ShardSink`](crate::shard::ShardSink) a single-machine
//! run uses, with the job's layout (Megatron or packed) and shard size, and writes the manifest a single
//! run would have written. The result is byte-identical to a single-machine run of the same command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use flame_formats::TailPolicy;
use flame_formats::manifest::{MANIFEST_VERSION, Manifest, ShardFormat, Totals};
use serde::Serialize;

use crate::cli::MergeArgs;
use crate::config::Partial;
use crate::restream::{DocumentSet, restream};
use crate::shard::Layout;

#[derive(Debug, Serialize)]
struct MergeSummary {
    output: String,
    parts: u32,
    documents: u64,
    empty_documents: u64,
    tokens: u64,
    shards: usize,
}

/// Runs `flame-prep merge`.
pub fn run(args: &MergeArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.path;
    let parts = find_parts(dir)?;
    let manifests: Vec<Manifest> = parts
        .iter()
        .map(|(_, p)| Manifest::load(p))
        .collect::<Result<_, _>>()?;
    let first = &manifests[0];
    let parameters = common_parameters(&manifests, &parts)?;
    let layout = match (
        parameters
            .get("context_length")
            .and_then(serde_json::Value::as_u64),
        parameters.get("tail"),
    ) {
        (Some(seq_len), Some(tail)) => Layout::Packed {
            seq_len: u32::try_from(seq_len).context("context_length out of range")?,
            tail: serde_json::from_value::<TailPolicy>(tail.clone()).context("parameters.tail")?,
        },
        _ => Layout::Megatron,
    };
    let shard_tokens = parameters
        .get("shard_tokens")
        .and_then(serde_json::Value::as_u64)
        .context("parameters.shard_tokens missing")?;

    let shuffle_seed = parameters
        .get("shuffle_seed")
        .and_then(serde_json::Value::as_u64);
    let mut prefixes = Vec::new();
    for (manifest, (_, path)) in manifests.iter().zip(&parts) {
        manifest
            .verify(path)
            .with_context(|| format!("{}: part does not verify", path.display()))?;
        prefixes.extend(manifest.shard_prefixes(path));
    }
    let set = DocumentSet::open(&prefixes)?;
    let summary = restream(
        &set,
        shuffle_seed,
        dir,
        &dir.join(".staging-merge"),
        first.dtype,
        layout,
        shard_tokens,
    )?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        format: if summary.packing.is_some() {
            ShardFormat::Packed
        } else {
            ShardFormat::Megatron
        },
        dtype: first.dtype,
        packing: summary.packing,
        tokenizer: first.tokenizer.clone(),
        totals: Totals {
            empty_documents: manifests.iter().map(|m| m.totals.empty_documents).sum(),
            ..summary.totals
        },
        shards: summary.shards,
        sources: manifests
            .iter()
            .flat_map(|m| m.sources.iter().cloned())
            .collect(),
        parameters,
        created_by: first.created_by.clone(),
    };
    manifest.write(dir)?;
    if args.remove_parts {
        for (_, path) in &parts {
            std::fs::remove_dir_all(path).with_context(|| format!("{}: remove", path.display()))?;
        }
    }
    let result = MergeSummary {
        output: dir.display().to_string(),
        parts: u32::try_from(parts.len()).expect("counted by u32"),
        documents: manifest.totals.documents,
        empty_documents: manifest.totals.empty_documents,
        tokens: manifest.totals.tokens,
        shards: manifest.shards.len(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        eprintln!(
            "flame-prep: merged {} parts: {} documents ({} empty), {} tokens in {} shards -> {}",
            result.parts,
            result.documents,
            result.empty_documents,
            result.tokens,
            result.shards,
            result.output
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The parameters all parts share (without `partial`), after checking the parts belong to one job.
fn common_parameters(
    manifests: &[Manifest],
    parts: &[(Partial, PathBuf)],
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let first = &manifests[0];
    let mut parameters = first.parameters.clone();
    parameters.remove("partial");
    for (manifest, (partial, path)) in manifests.iter().zip(parts) {
        let mut own = manifest.parameters.clone();
        anyhow::ensure!(
            own.remove("partial") == Some(serde_json::json!(partial)),
            "{}: manifest.json does not describe part {}",
            path.display(),
            partial.dir_name()
        );
        anyhow::ensure!(
            own == parameters,
            "{}: parameters differ from part 0's; all parts must come from the same command",
            path.display()
        );
        anyhow::ensure!(
            manifest.tokenizer == first.tokenizer && manifest.dtype == first.dtype,
            "{}: tokenizer differs from part 0's",
            path.display()
        );
        anyhow::ensure!(
            manifest.format == ShardFormat::Megatron,
            "{}: not a part of a multi-machine job",
            path.display()
        );
    }
    Ok(parameters)
}

/// `part-IIIII-of-KKKKK` directories of `dir`: all K of them, each with a manifest, in order.
fn find_parts(dir: &Path) -> anyhow::Result<Vec<(Partial, PathBuf)>> {
    let mut parts = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: read directory", dir.display()))?
    {
        let entry = entry.with_context(|| format!("{}: read directory", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((index, count)) = name
            .strip_prefix("part-")
            .and_then(|rest| rest.split_once("-of-"))
        else {
            continue;
        };
        let (Ok(index), Ok(count)) = (index.parse(), count.parse()) else {
            continue;
        };
        parts.push((Partial { index, count }, entry.path()));
    }
    anyhow::ensure!(
        !parts.is_empty(),
        "{}: no part-IIIII-of-KKKKK directories (from --num-shards/--shard-index runs)",
        dir.display()
    );
    parts.sort_by_key(|(p, _)| p.index);
    let count = parts[0].0.count;
    let indices: Vec<u32> = parts.iter().map(|(p, _)| p.index).collect();
    anyhow::ensure!(
        parts.iter().all(|(p, _)| p.count == count) && indices == (0..count).collect::<Vec<_>>(),
        "{}: parts {indices:?} found, expected 0..{count} of one job",
        dir.display()
    );
    for (partial, path) in &parts {
        anyhow::ensure!(
            path.join("manifest.json").is_file(),
            "{}: part {} is not finished (no manifest.json); rerun its --shard-index {}",
            path.display(),
            partial.dir_name(),
            partial.index
        );
    }
    Ok(parts)
}
