//! `flame-prep inspect`: what a dataset holds, for people (`stdout` text) or tools (`--json`, `--dump`).

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::Context;
use flame_formats::{Corpus, Shard};
use serde::Serialize;

use crate::cli::InspectArgs;

/// Lengths are bucketed by powers of two: `[0]`, `[1]`, `[2, 3]`, `[4, 7]`, ...
const NUM_BUCKETS: usize = 33;

#[derive(Debug, Serialize)]
struct Summary {
    path: String,
    format: &'static str,
    dtype: Option<String>,
    shards: usize,
    sequences: u64,
    documents: u64,
    /// From the manifest (none without one: shards hold ids, not texts): the source documents, which
    /// for packed output are not the windows above, and those of them whose text was empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    source_documents: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    empty_documents: Option<u64>,
    tokens: u64,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq_len: Option<u32>,
    sequence_length: LengthStats,
    histogram: Vec<Bucket>,
}

#[derive(Debug, Default, Serialize)]
struct LengthStats {
    min: u64,
    max: u64,
    mean: f64,
}

#[derive(Debug, Serialize)]
struct Bucket {
    min: u64,
    max: u64,
    count: u64,
}

/// Runs `flame-prep inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let corpus = Corpus::open(&args.path)?;
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 16, stdout);
    if args.dump {
        dump(&corpus, args.range.clone().unwrap_or(0..u64::MAX), &mut out)?;
    } else {
        let summary = summarize(&corpus)?;
        if args.json {
            serde_json::to_writer_pretty(&mut out, &summary).context("writing JSON")?;
            writeln!(out)?;
        } else {
            print_text(&summary, &mut out)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn dump(corpus: &Corpus, range: std::ops::Range<u64>, out: &mut impl Write) -> anyhow::Result<()> {
    let end = range.end.min(corpus.num_sequences());
    for i in range.start..end {
        let tokens = corpus.sequence(i)?;
        serde_json::to_writer(&mut *out, &tokens).context("writing JSON")?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn summarize(corpus: &Corpus) -> anyhow::Result<Summary> {
    let mut counts = [0u64; NUM_BUCKETS];
    let mut stats = LengthStats {
        min: u64::MAX,
        ..LengthStats::default()
    };
    let mut total = 0u64;
    let mut bytes = 0u64;
    let mut format = "megatron";
    let mut seq_len = None;
    for shard in corpus.shards() {
        let tokens = shard.tokens();
        bytes += (tokens.idx_bytes().len() + tokens.bin_bytes().len()) as u64;
        match shard {
            Shard::Megatron(d) => format = d.kind().name(),
            Shard::Packed(p) => {
                format = "packed";
                seq_len = Some(p.seq_len());
                bytes +=
                    (p.cu_seqlens().idx_bytes().len() + p.cu_seqlens().bin_bytes().len()) as u64;
            }
        }
        for (i, len) in tokens.sequence_lengths().enumerate() {
            let len = u64::try_from(len).with_context(|| {
                format!(
                    "{}: sequence {i} has a negative length {len}",
                    tokens.idx_path().display()
                )
            })?;
            counts[bucket_of(len)] += 1;
            stats.min = stats.min.min(len);
            stats.max = stats.max.max(len);
            total += len;
        }
    }
    let sequences = corpus.num_sequences();
    if sequences == 0 {
        stats.min = 0;
    } else {
        #[allow(clippy::cast_precision_loss)] // a mean for people
        let mean = total as f64 / sequences as f64;
        stats.mean = mean;
    }
    let histogram = counts
        .iter()
        .enumerate()
        .filter(|&(_, &count)| count > 0)
        .map(|(b, &count)| {
            let (min, max) = bucket_bounds(b);
            Bucket { min, max, count }
        })
        .collect();
    Ok(Summary {
        path: corpus.root().display().to_string(),
        format,
        dtype: corpus.dtype().map(|d| d.to_string()),
        shards: corpus.shards().len(),
        sequences,
        documents: corpus.num_documents(),
        source_documents: corpus.manifest().map(|m| m.totals.documents),
        empty_documents: corpus.manifest().map(|m| m.totals.empty_documents),
        tokens: corpus.num_tokens(),
        bytes,
        seq_len,
        sequence_length: stats,
        histogram,
    })
}

fn bucket_of(len: u64) -> usize {
    if len == 0 {
        0
    } else {
        (64 - len.leading_zeros() as usize).min(NUM_BUCKETS - 1)
    }
}

fn bucket_bounds(bucket: usize) -> (u64, u64) {
    match bucket {
        0 => (0, 0),
        b if b == NUM_BUCKETS - 1 => (1 << (b - 1), u64::MAX),
        b => (1 << (b - 1), (1 << b) - 1),
    }
}

fn print_text(s: &Summary, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "path       {}", s.path)?;
    writeln!(
        out,
        "format     {}{}",
        s.format,
        s.seq_len
            .map(|l| format!(" (seq_len {l})"))
            .unwrap_or_default()
    )?;
    writeln!(out, "dtype      {}", s.dtype.as_deref().unwrap_or("-"))?;
    writeln!(out, "shards     {}", s.shards)?;
    writeln!(out, "sequences  {}", s.sequences)?;
    writeln!(out, "documents  {}", s.documents)?;
    if let (Some(documents), Some(empty)) = (s.source_documents, s.empty_documents) {
        writeln!(
            out,
            "source     {documents} documents, {empty} of them empty"
        )?;
    }
    writeln!(out, "tokens     {}", s.tokens)?;
    writeln!(out, "bytes      {}", s.bytes)?;
    let l = &s.sequence_length;
    writeln!(
        out,
        "length     min {}  mean {:.1}  max {}",
        l.min, l.mean, l.max
    )?;
    let widest = s.histogram.iter().map(|b| b.count).max().unwrap_or(1);
    for b in &s.histogram {
        #[allow(clippy::cast_possible_truncation)] // at most 40
        let bar = (b.count * 40).div_ceil(widest) as usize;
        let label = if b.max == u64::MAX {
            format!("{}..", b.min)
        } else {
            format!("{}..={}", b.min, b.max)
        };
        writeln!(out, "  {label:>22}  {:>10}  {}", b.count, "#".repeat(bar))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(4), 3);
        assert_eq!(bucket_bounds(3), (4, 7));
        for len in [0u64, 1, 2, 5, 1000, 1 << 31] {
            let (min, max) = bucket_bounds(bucket_of(len));
            assert!(min <= len && len <= max, "{len} in {min}..={max}");
        }
    }
}
