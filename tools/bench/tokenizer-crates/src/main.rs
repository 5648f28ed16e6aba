//! Exactness and speed of `tokie`, `fastokens`, `kitoken`, GitHub's `bpe` (`bpe-openai`) and flame-prep's
//! own fast path (`flame_preprocess::spm_bpe`, where it applies) against the
//! `tokenizers` crate, on every document of ../shared/data/corpus/jsonl and every golden text, for the
//! four tokenizers of ../shared/data/tokenizers. One thread; prints a table.
//!
//! Usage: tokenizer-crates [SHARED_DATA]   (default ../shared/data from the repository root)

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

type Encode = Box<dyn Fn(&str) -> Result<Vec<u32>, String>>;

fn texts(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("jsonl");
            let id = row["id"]
                .as_str()
                .map_or_else(|| row["title"].to_string(), str::to_string);
            (id, row["text"].as_str().expect("text").to_string())
        })
        .collect()
}

fn golden(path: &Path) -> Vec<Vec<u32>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("jsonl");
            row["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32"))
                .collect()
        })
        .collect()
}

fn candidates(name: &str, file: &Path) -> Vec<(&'static str, Result<Encode, String>)> {
    let guarded = |f: Box<dyn Fn() -> Result<Encode, String>>| {
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err("panicked while loading".into()))
    };
    let path = file.to_path_buf();
    let mut out: Vec<(&'static str, Result<Encode, String>)> = vec![
        ("tokie 0.1.4", {
            let path = path.clone();
            guarded(Box::new(move || {
                let t = tokie::Tokenizer::from_json(&path).map_err(|e| format!("{e:?}"))?;
                Ok(Box::new(move |s: &str| Ok(t.encode(s, false).ids)) as Encode)
            }))
        }),
        ("fastokens 0.3.5", {
            let path = path.clone();
            guarded(Box::new(move || {
                let t = fastokens::Tokenizer::from_file(&path).map_err(|e| format!("{e:?}"))?;
                Ok(Box::new(move |s: &str| t.encode(s).map_err(|e| format!("{e:?}"))) as Encode)
            }))
        }),
        ("kitoken 0.11.1", {
            let path = path.clone();
            guarded(Box::new(move || {
                let t =
                    kitoken::Kitoken::from_tokenizers_file(&path).map_err(|e| format!("{e:?}"))?;
                Ok(
                    Box::new(move |s: &str| t.encode(s, true).map_err(|e| format!("{e:?}")))
                        as Encode,
                )
            }))
        }),
    ];
    // flame-prep's own fast encoders (every tokenizer here has one), as flame-prep runs them.
    match flame_preprocess::tokenize::TextEncoder::load(
        file,
        flame_preprocess::tokenize::BosPolicy::Never,
        false,
        false,
    ) {
        Ok(encoder) if encoder.fast_path().is_some() => out.push((
            "flame-prep",
            Ok(Box::new(move |s: &str| {
                let mut ids = Vec::new();
                encoder.encode(s, &mut ids).map_err(|e| e.to_string())?;
                Ok(ids)
            }) as Encode),
        )),
        Ok(_) => {}
        Err(e) => out.push(("flame-prep", Err(e.to_string()))),
    }
    // GitHub's bpe ships prebuilt OpenAI encodings only (cl100k, o200k); it cannot load a tokenizer.json.
    if name == "cl100k_base" {
        out.push((
            "bpe-openai 0.3.2",
            Ok(Box::new(|s: &str| Ok(bpe_openai::cl100k_base().encode(s))) as Encode),
        ));
    }
    out
}

fn main() {
    let data = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("../shared/data"), PathBuf::from);
    let golden_texts = texts(&data.join("golden/texts.jsonl"));
    let mut corpus = Vec::new();
    for file in [
        "en-moby-dick",
        "en-jargon-devil",
        "multi-udhr",
        "code-go-std-1mb",
    ] {
        corpus.extend(texts(&data.join(format!("corpus/jsonl/{file}.jsonl"))));
    }
    let bytes: usize = corpus.iter().map(|(_, t)| t.len()).sum();
    println!(
        "{} golden texts; corpus: {} documents, {:.1} MB (../shared/data/corpus/jsonl); one thread",
        golden_texts.len(),
        corpus.len(),
        bytes as f64 / 1e6
    );
    println!(
        "{:<16} {:<17} {:>14} {:>18} {:>9} {:>8}  first difference",
        "tokenizer", "crate", "golden equal", "corpus docs equal", "MB/s", "× tokenizers"
    );
    for name in ["gpt2", "mistral-7b-v0.1", "cl100k_base", "tekken-240911"] {
        let file = data.join(format!("tokenizers/{name}/tokenizer.json"));
        let want_golden = golden(&data.join(format!("golden/{name}.ids.jsonl")));
        let reference = tokenizers::Tokenizer::from_file(&file).expect("tokenizers loads it");
        let encode_ref = |s: &str| {
            reference
                .encode_fast(s, false)
                .expect("encodes")
                .get_ids()
                .to_vec()
        };
        let start = Instant::now();
        let want: Vec<Vec<u32>> = corpus.iter().map(|(_, t)| encode_ref(t)).collect();
        let ref_mbs = bytes as f64 / 1e6 / start.elapsed().as_secs_f64();
        let ref_golden = golden_texts
            .iter()
            .zip(&want_golden)
            .filter(|((_, t), ids)| encode_ref(t) == **ids)
            .count();
        println!(
            "{name:<16} {:<17} {:>11}/{} {:>18} {ref_mbs:>9.1} {:>8.2}",
            "tokenizers 0.23",
            ref_golden,
            want_golden.len(),
            "(reference)",
            1.0
        );
        for (crate_name, encoder) in candidates(name, &file) {
            let encode = match encoder {
                Ok(e) => e,
                Err(e) => {
                    println!("{name:<16} {crate_name:<17} does not load: {e}");
                    continue;
                }
            };
            let run = |s: &str| {
                catch_unwind(AssertUnwindSafe(|| encode(s)))
                    .unwrap_or_else(|_| Err("panicked".into()))
            };
            let golden_equal = golden_texts
                .iter()
                .zip(&want_golden)
                .filter(|((_, t), ids)| run(t).as_ref() == Ok(*ids))
                .count();
            let start = Instant::now();
            let got: Vec<Result<Vec<u32>, String>> = corpus.iter().map(|(_, t)| run(t)).collect();
            let mbs = bytes as f64 / 1e6 / start.elapsed().as_secs_f64();
            let equal = got
                .iter()
                .zip(&want)
                .filter(|(g, w)| g.as_ref() == Ok(*w))
                .count();
            let first = got
                .iter()
                .zip(&want)
                .zip(&corpus)
                .find(|((g, w), _)| g.as_ref() != Ok(*w))
                .map(|((g, w), (id, _))| match g {
                    Err(e) => format!("{id}: {e}"),
                    Ok(g) => {
                        let at = g
                            .iter()
                            .zip(w.iter())
                            .position(|(a, b)| a != b)
                            .unwrap_or(g.len().min(w.len()));
                        format!(
                            "{id}: at id {at} of {}, {:?} vs {:?}",
                            w.len(),
                            &g[at..(at + 3).min(g.len())],
                            &w[at..(at + 3).min(w.len())]
                        )
                    }
                });
            println!(
                "{name:<16} {crate_name:<17} {golden_equal:>11}/{} {equal:>11}/{:<6} {mbs:>9.1} {:>8.2}  {}",
                want_golden.len(),
                corpus.len(),
                mbs / ref_mbs,
                first.unwrap_or_default()
            );
        }
    }
}
