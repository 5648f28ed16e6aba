//! Start-up and resume times of the stream on a synthetic Megatron index of many documents.
//!
//! Builds (once, cached under `~/.cache/flame/bench/stream/`) a `uint16` dataset of `N` documents of 1 to
//! 4 tokens (the cost of planning a stream grows with documents, not tokens), then measures, each on a
//! fresh process state: `Stream::open` (opening the index and one pass over the lengths), the first
//! sample, and a sample at step 10^6 of a job with global batch 32 (a resume), the samples after it, and
//! a sample at step 10^9.
//!
//! Usage: `cargo run --release -p flame-streamer --example startup -- [N]` (default 100000000).

use std::path::PathBuf;
use std::time::Instant;

use flame_formats::TokenDtype;
use flame_formats::megatron::IndexedDatasetBuilder;
use flame_streamer::spec::JobSpec;
use flame_streamer::stream::Stream;

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(100_000_000), |a| a.parse())?;
    let cache = std::env::var_os("FLAME_CACHE")
        .map_or_else(
            || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/flame"),
            PathBuf::from,
        )
        .join("bench/stream");
    std::fs::create_dir_all(&cache)?;
    let prefix = cache.join(format!("synthetic-{n}"));
    if !prefix.with_extension("idx").exists() {
        let start = Instant::now();
        let mut builder = IndexedDatasetBuilder::create(&prefix, TokenDtype::Uint16)?;
        let mut doc = Vec::with_capacity(4);
        for d in 0..n {
            doc.clear();
            doc.extend(
                (0..=(d.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 62))
                    .map(|t| u32::try_from((d + t) % 50_000).expect("small")),
            );
            builder.add_item(&doc)?;
            builder.end_document()?;
        }
        builder.finalize()?;
        println!(
            "built {n} documents in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    let spec = JobSpec::from_toml(&format!(
        "seed = 1\nseq_len = 2048\nmicro_batch_size = 4\nglobal_batch_size = 32\n[[datasets]]\npath = \"{}\"\n",
        prefix.display()
    ))?;
    let start = Instant::now();
    let stream = Stream::open(spec.clone())?;
    let open_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    stream.sample(0)?;
    let first_s = start.elapsed().as_secs_f64();
    let resume_k = 1_000_000 * 32;
    let start = Instant::now();
    stream.sample(resume_k)?;
    let resume_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for k in resume_k + 1..resume_k + 1 + 320 {
        stream.sample(k)?;
    }
    let next_s = start.elapsed().as_secs_f64() / 320.0;
    // O(1): a thousand times further costs the same.
    let start = Instant::now();
    stream.sample(1_000_000_000 * 32)?;
    let far_s = start.elapsed().as_secs_f64();
    println!(
        "{{\"documents\": {n}, \"open_s\": {open_s:.3}, \"first_sample_s\": {first_s:.4}, \"resume_at_step_1e6_s\": {resume_s:.4}, \"resume_at_step_1e9_s\": {far_s:.4}, \"next_sample_s\": {next_s:.6}}}"
    );
    Ok(())
}
