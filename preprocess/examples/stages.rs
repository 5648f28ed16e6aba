//! Where flame-prep's time goes, stage by stage, on one thread, for `tools/bench/prep.py`:
//!
//! * `read`: the inputs decoded into documents (parquet / jsonl → strings in memory);
//! * `scan`: the fast encoder's split into pieces alone (the regex scanner, or SentencePiece's cut);
//! * `scan_general`: for byte-level BPE, the same split by the general regex engine
//!   (`pretok::general`), which tokenizers without a hand scanner use (`null` otherwise);
//! * `encode`: whole documents to ids through flame-prep's encoder with a cold cache (scan, cache
//!   lookups and BPE; `encode − scan` is the cache and BPE);
//! * `write`: the ids written as a Megatron `.bin/.idx` (checksummed, synced).
//!
//! Prints `{"text_bytes", "tokens", "read", "scan", "scan_general", "encode", "write"}` (seconds) as JSON.
//! Usage: `cargo run --release --example stages -- INPUT TOKENIZER_JSON`.

use std::time::Instant;

use flame_formats::TokenDtype;
use flame_formats::megatron::IndexedDatasetBuilder;
use flame_preprocess::byte_bpe::ByteLevelBpe;
use flame_preprocess::pretok::GPT2;
use flame_preprocess::pretok::general::{GeneralSplit, Keep};
use flame_preprocess::source::{open_reader, resolve_inputs};
use flame_preprocess::spm_bpe::SentencePieceBpe;
use flame_preprocess::tokenize::{BosPolicy, TextEncoder};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: stages INPUT TOKENIZER_JSON");
    let start = Instant::now();
    let mut texts = Vec::new();
    for (i, input) in resolve_inputs(&args[1], "train")?.iter().enumerate() {
        let mut reader = open_reader(input, i, None)?;
        let mut records = Vec::new();
        while reader.read_batch(&mut records, 4096, usize::MAX)? {}
        for record in records {
            texts.push(record?.text);
        }
    }
    let read = start.elapsed().as_secs_f64();
    let text_bytes: usize = texts.iter().map(|text| text.len()).sum();

    let path = std::path::Path::new(&args[2]);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let mut pieces = 0usize;
    // The encoders and the scanners' class tables are built before the clock starts: `scan` is the split.
    let byte_level = ByteLevelBpe::from_json(&json);
    let sentencepiece = match byte_level {
        Some(_) => None,
        None => SentencePieceBpe::from_json(&json),
    };
    let general = general_split(&json["pre_tokenizer"]).filter(|_| byte_level.is_some());
    flame_preprocess::pretok::Classes::get();
    let start = Instant::now();
    if let Some(encoder) = &byte_level {
        for text in &texts {
            encoder.splitter().split(text, |_| pieces += 1);
        }
    } else if let Some(encoder) = &sentencepiece {
        for text in &texts {
            encoder.split(text, |_| pieces += 1);
        }
    } else {
        anyhow::bail!("{}: no fast encoder for this tokenizer", path.display());
    }
    let scan = start.elapsed().as_secs_f64();
    let scan_general = general.map_or("null".to_owned(), |general| {
        let (start, mut general_pieces) = (Instant::now(), 0usize);
        for text in &texts {
            general.split(text, |_| general_pieces += 1);
        }
        assert_eq!(general_pieces, pieces, "the general split's pieces");
        start.elapsed().as_secs_f64().to_string()
    });

    // The cache of one of a two-worker flame-prep's threads.
    flame_preprocess::bpe::size_caches(64 << 20, 1);
    let encoder = TextEncoder::load(path, BosPolicy::Never, false, false)?;
    let mut ids: Vec<Vec<u32>> = Vec::with_capacity(texts.len());
    let start = Instant::now();
    for text in &texts {
        let mut out = Vec::new();
        encoder.encode(text, &mut out)?;
        ids.push(out);
    }
    let encode = start.elapsed().as_secs_f64();
    let tokens: usize = ids.iter().map(Vec::len).sum();

    let dir = tempfile::tempdir()?;
    let start = Instant::now();
    let mut builder = IndexedDatasetBuilder::create(
        dir.path().join("out"),
        TokenDtype::for_vocab_size(encoder.info().vocab_size),
    )?;
    for document in &ids {
        builder.add_item(document)?;
        builder.end_document()?;
    }
    builder.finalize()?;
    let write = start.elapsed().as_secs_f64();
    println!(
        r#"{{"text_bytes": {text_bytes}, "tokens": {tokens}, "pieces": {pieces}, "read": {read}, "scan": {scan}, "scan_general": {scan_general}, "encode": {encode}, "write": {write}}}"#
    );
    Ok(())
}

/// The general engine's split for a byte-level pre-tokenizer: GPT-2's regex for `ByteLevel` with one,
/// else the `Split`s of a sequence ending in `ByteLevel`.
fn general_split(pre_tokenizer: &serde_json::Value) -> Option<GeneralSplit> {
    if pre_tokenizer["type"] == "ByteLevel" && pre_tokenizer["use_regex"] == true {
        return GeneralSplit::new(&[(GPT2, Keep::All)]);
    }
    let [splits @ .., _] = pre_tokenizer["pretokenizers"].as_array()?.as_slice() else {
        return None;
    };
    GeneralSplit::from_json(splits)
}
