//! flame-prep's Megatron output beside Megatron's own preprocessing (`tools/bench/megatron_preprocess.py`:
//! `tools/preprocess_data.py`'s `Encoder.encode` over megatron-core's real `HuggingFaceTokenizer` and
//! `IndexedDatasetBuilder`), byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{flame_prep, python, repo_root, shared};

/// A directory `AutoTokenizer`, megatron-core and flame-prep all load: the shared `tokenizer.json` and a
/// `tokenizer_config.json` naming BOS and EOS (as `tools/bench/prep.py` makes them).
fn tokenizer_dir(work: &Path, name: &str, bos: Option<&str>, eos: &str) -> PathBuf {
    let dir = work.join("tokenizers").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        shared()
            .join("data/tokenizers")
            .join(name)
            .join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let mut config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1_000_000_000u64,
        "eos_token": eos,
    });
    if let Some(bos) = bos {
        config["bos_token"] = bos.into();
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    dir
}

/// Issue 16: for a corpus with empty texts (first, last, in a row, beside a text of one space), the
/// `.bin`/`.idx` of flame-prep are those of Megatron's preprocessing, with and without `--append-eod`,
/// for GPT-2 and Mistral, with megatron-core 0.16's default (ids without special tokens: `--bos never`)
/// and with `--tokenizer-hf-include-special-tokens`, 0.17's default (`tokenizer(text).input_ids`:
/// `--bos tokenizer`). An empty text there is a document of zero sequences, unless the post-processor
/// gives it ids (Mistral's `<s>`), and EOD follows only ids.
#[test]
fn empty_texts_are_written_as_megatron_preprocess_data_writes_them() {
    let work = tempfile::tempdir().unwrap();
    let texts = [
        "",
        "Call me Ishmael.",
        "",
        "",
        " ",
        "Some years ago\n\nnever mind how long precisely",
        "",
    ];
    let input = work.path().join("corpus.jsonl");
    let lines: Vec<String> = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect();
    std::fs::write(&input, lines.concat()).unwrap();
    let tokenizers = [
        (
            "gpt2",
            tokenizer_dir(work.path(), "gpt2", None, "<|endoftext|>"),
        ),
        (
            "mistral",
            tokenizer_dir(work.path(), "mistral-7b-v0.1", Some("<s>"), "</s>"),
        ),
    ];
    for (name, tokenizer) in &tokenizers {
        for (bos, include_special_tokens) in [("never", false), ("tokenizer", true)] {
            for append_eod in [false, true] {
                let case = format!("{name}-{bos}-{append_eod}");
                let prefix = work.path().join("megatron").join(&case);
                std::fs::create_dir_all(prefix.parent().unwrap()).unwrap();
                let mut megatron = Command::new(python());
                megatron
                    .arg(repo_root().join("tools/bench/megatron_preprocess.py"))
                    .args(["--input", input.to_str().unwrap()])
                    .args(["--output-prefix", prefix.to_str().unwrap()])
                    .args(["--tokenizer-model", tokenizer.to_str().unwrap()])
                    .args(["--workers", "1"]);
                if include_special_tokens {
                    megatron.arg("--tokenizer-hf-include-special-tokens");
                }
                if append_eod {
                    megatron.arg("--append-eod");
                }
                let output = megatron.output().unwrap();
                assert!(
                    output.status.success(),
                    "{case}: megatron_preprocess.py failed:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );

                let out = work.path().join("flame");
                let mut args = vec![
                    "--dataset",
                    input.to_str().unwrap(),
                    "--tokenizer",
                    tokenizer.to_str().unwrap(),
                    "--output",
                    out.to_str().unwrap(),
                    "--name",
                    &case,
                    "--bos",
                    bos,
                    "--json",
                ];
                if append_eod {
                    args.push("--append-eod");
                }
                let run = flame_prep(&args);
                assert_eq!(run.code, 0, "{case}: {}", run.stderr);
                let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
                assert_eq!(
                    (&summary["documents"], &summary["empty_documents"]),
                    (&7.into(), &4.into()),
                    "{case}"
                );
                let shard = out.join("corpus").join(&case).join("train/shard_00000");
                for ext in ["bin", "idx"] {
                    let ours = std::fs::read(shard.with_extension(ext)).unwrap();
                    let theirs =
                        std::fs::read(format!("{}_text_document.{ext}", prefix.display())).unwrap();
                    assert!(
                        ours == theirs,
                        "{case}: .{ext} differs from Megatron's ({} vs {} bytes)",
                        ours.len(),
                        theirs.len()
                    );
                }
            }
        }
    }
}
