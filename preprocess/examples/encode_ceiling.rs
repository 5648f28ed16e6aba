//! The raw-encode ceiling of the `tokenizers` crate for `tools/bench/prep.py`. Every document of the inputs
//! is read into memory first; then, with nothing else running, the documents are encoded two ways and the
//! faster counts as the ceiling:
//!
//! * `batch`: `Tokenizer::encode_batch_fast` (the crate's own thread pool) over batches of documents;
//! * `threads`: one thread per core calling `Tokenizer::encode_fast` on the next document, dropping the
//!   result in the same thread (what any pipeline around the crate does at best).
//!
//! Prints `{"seconds", "batch_seconds", "threads_seconds", "tokens", "text_bytes", "threads"}`.
//! Usage: `cargo run --release --example encode_ceiling -- INPUT TOKENIZER_JSON`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use flame_preprocess::source::{open_reader, resolve_inputs};
use tokenizers::Tokenizer;

const BATCH_DOCUMENTS: usize = 1024;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 3,
        "usage: encode_ceiling INPUT TOKENIZER_JSON"
    );
    let mut texts = Vec::new();
    for (i, input) in resolve_inputs(&args[1], "train")?.iter().enumerate() {
        let mut reader = open_reader(input, i, None)?;
        let mut records = Vec::new();
        while reader.read_batch(&mut records, 4096, usize::MAX)? {}
        texts.extend(
            records
                .into_iter()
                .filter_map(|r| r.ok().map(|d| String::from(d.text))),
        );
    }
    let text_bytes: usize = texts.iter().map(String::len).sum();
    let mut tokenizer = Tokenizer::from_file(&args[2]).map_err(|e| anyhow::anyhow!("{e}"))?;
    // As flame-prep by default: a special token's string inside a document is encoded as text.
    tokenizer.set_encode_special_tokens(true);

    let start = Instant::now();
    let mut tokens = 0;
    for chunk in texts.chunks(BATCH_DOCUMENTS) {
        let encodings = tokenizer
            .encode_batch_fast(chunk.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokens += encodings.iter().map(|e| e.get_ids().len()).sum::<usize>();
    }
    let batch_seconds = start.elapsed().as_secs_f64();

    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let (next, counted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut mine = 0;
                while let Some(text) = texts.get(next.fetch_add(1, Ordering::Relaxed)) {
                    mine += tokenizer
                        .encode_fast(text.as_str(), true)
                        .map_or(0, |e| e.get_ids().len());
                }
                counted.fetch_add(mine, Ordering::Relaxed);
            });
        }
    });
    let threads_seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        counted.into_inner() == tokens,
        "the two ways counted different tokens"
    );

    let seconds = batch_seconds.min(threads_seconds);
    println!(
        r#"{{"seconds": {seconds}, "batch_seconds": {batch_seconds}, "threads_seconds": {threads_seconds}, "tokens": {tokens}, "text_bytes": {text_bytes}, "threads": {threads}}}"#
    );
    Ok(())
}
