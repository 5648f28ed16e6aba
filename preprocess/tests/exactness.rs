//! Token ids are exactly those of the reference implementations: the golden ids of `../shared/data/golden`
//! (tiktoken, sentencepiece, mistral-common) and the Python `tokenizers` library on every document of
//! `../shared/data/corpus`, for all four tokenizers in `../shared/data/tokenizers`.

use std::path::{Path, PathBuf};
use std::process::Command;

use flame_preprocess::source::{open_reader, resolve_inputs};
use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use sha2::Digest;

use crate::util::{python, repo_root, shared};

pub const TOKENIZERS: [&str; 4] = ["gpt2", "mistral-7b-v0.1", "cl100k_base", "tekken-240911"];

pub fn tokenizer_path(name: &str) -> PathBuf {
    shared()
        .join("data/tokenizers")
        .join(name)
        .join("tokenizer.json")
}

#[test]
fn golden_ids_match_for_every_tokenizer() {
    let texts = std::fs::read_to_string(shared().join("data/golden/texts.jsonl")).unwrap();
    let texts: Vec<serde_json::Value> = texts
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for name in TOKENIZERS {
        let encoder =
            TextEncoder::load(&tokenizer_path(name), BosPolicy::Never, false, false).unwrap();
        let golden =
            std::fs::read_to_string(shared().join(format!("data/golden/{name}.ids.jsonl")))
                .unwrap();
        let mut ids = Vec::new();
        let mut checked = 0;
        for (line, text) in golden.lines().zip(&texts) {
            let expected: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(expected["id"], text["id"]);
            encoder
                .encode(text["text"].as_str().unwrap(), &mut ids)
                .unwrap();
            let expected: Vec<u32> = expected["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
                .collect();
            assert_eq!(ids, expected, "{name}: golden text {}", text["id"]);
            checked += 1;
        }
        assert_eq!(checked, 52, "{name}");
    }
}

/// Issue 16: an empty text is encoded as the tokenizer encodes `""` (only what the post-processor adds,
/// with `--bos tokenizer`), and `--append-eod` adds EOD only to a document that has ids, as Megatron's
/// `preprocess_data.py` does (`if len(doc_ids) > 0`). For GPT-2 and Mistral the ids are spelled out: they
/// are what `preprocess_data.py` writes (see `megatron_peer` for the bytes).
#[test]
fn an_empty_text_gets_what_the_tokenizer_adds_and_eod_only_after_ids() {
    let mut got = Vec::new();
    for name in TOKENIZERS {
        let path = tokenizer_path(name);
        let reference = tokenizers::Tokenizer::from_file(&path).unwrap();
        for bos in [BosPolicy::Tokenizer, BosPolicy::Never, BosPolicy::Always] {
            if bos == BosPolicy::Always && name != "mistral-7b-v0.1" {
                continue;
            }
            let post_processed = reference
                .encode_fast("", bos == BosPolicy::Tokenizer)
                .unwrap()
                .get_ids()
                .to_vec();
            for append_eod in [false, true] {
                let encoder = TextEncoder::load(&path, bos, append_eod, false).unwrap();
                let mut ids = vec![7];
                encoder.encode("", &mut ids).unwrap();
                let mut want = post_processed.clone();
                if bos == BosPolicy::Always {
                    want.insert(0, encoder.info().bos_id.unwrap());
                }
                if append_eod && !want.is_empty() {
                    want.push(encoder.info().eos_id.unwrap());
                }
                assert_eq!(ids, want, "{name} {bos:?} append_eod={append_eod}");
                got.push(((name, bos, append_eod), ids));
            }
        }
    }
    let ids = |name: &str, bos: BosPolicy, append_eod: bool| {
        let (_, ids) = got
            .iter()
            .find(|(key, _)| *key == (name, bos, append_eod))
            .unwrap();
        ids.as_slice()
    };
    for bos in [BosPolicy::Tokenizer, BosPolicy::Never] {
        for append_eod in [false, true] {
            assert_eq!(ids("gpt2", bos, append_eod), [0u32; 0]);
            assert_eq!(
                ids("mistral-7b-v0.1", BosPolicy::Never, append_eod),
                [0u32; 0]
            );
        }
    }
    let mistral = |bos, append_eod| ids("mistral-7b-v0.1", bos, append_eod);
    assert_eq!(mistral(BosPolicy::Tokenizer, false), [1]);
    assert_eq!(mistral(BosPolicy::Tokenizer, true), [1, 2]);
    assert_eq!(mistral(BosPolicy::Always, false), [1]);
    assert_eq!(mistral(BosPolicy::Always, true), [1, 2]);
}

/// Every document of the shared corpus: the two fineweb-schema parquet files and the jsonl files.
pub fn corpus_texts() -> Vec<String> {
    let mut inputs = resolve_inputs(
        &shared()
            .join("data/corpus/fineweb-edu-schema")
            .to_string_lossy(),
        "train",
    )
    .unwrap();
    inputs.extend(
        resolve_inputs(
            &shared().join("data/corpus/jsonl").to_string_lossy(),
            "train",
        )
        .unwrap(),
    );
    let mut texts = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let mut reader = open_reader(input, i, None).unwrap();
        let mut records = Vec::new();
        while reader.read_batch(&mut records, 1024, usize::MAX).unwrap() {}
        texts.extend(records.into_iter().map(|r| String::from(r.unwrap().text)));
    }
    texts
}

/// `(count, sha256)` per text from the Python library, cached by content under the flame cache.
fn reference(
    tokenizer: &Path,
    texts_path: &Path,
    texts_sha: &str,
    add_special_tokens: bool,
) -> Vec<(usize, String)> {
    let tokenizer_sha = hex::encode(sha2::Sha256::digest(std::fs::read(tokenizer).unwrap()));
    let cache = std::env::var_os("FLAME_CACHE")
        .map_or_else(
            || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flame"),
            PathBuf::from,
        )
        .join("reference-ids");
    let key = cache.join(format!(
        "{}-{}-{}.txt",
        &tokenizer_sha[..16],
        &texts_sha[..16],
        u8::from(add_special_tokens)
    ));
    let text = if let Ok(text) = std::fs::read_to_string(&key) {
        text
    } else {
        let mut command = Command::new(python());
        command
            .arg(repo_root().join("tools/interop/tokenize_reference.py"))
            .arg(tokenizer)
            .arg(texts_path);
        if add_special_tokens {
            command.arg("--add-special-tokens");
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        flame_formats::write_atomic(&key, text.as_bytes()).unwrap();
        text
    };
    text.lines()
        .map(|l| {
            let (count, sha) = l.split_once(' ').unwrap();
            (count.parse().unwrap(), sha.to_owned())
        })
        .collect()
}

/// `texts` as `{"text": …}` lines in `dir/texts.jsonl`, and the file's SHA-256 (the reference cache key).
fn write_texts(dir: &Path, texts: &[String]) -> (PathBuf, String) {
    let path = dir.join("texts.jsonl");
    let jsonl: String = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect();
    std::fs::write(&path, &jsonl).unwrap();
    (path, hex::encode(sha2::Sha256::digest(jsonl.as_bytes())))
}

fn digest(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn corpus_ids_match_the_python_library_for_every_tokenizer() {
    let texts = corpus_texts();
    assert_eq!(
        texts.len(),
        2978,
        "documents in ../shared/data/corpus (2 parquet + 4 jsonl files)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (texts_path, texts_sha) = write_texts(dir.path(), &texts);
    for name in TOKENIZERS {
        let expected = reference(&tokenizer_path(name), &texts_path, &texts_sha, false);
        assert_eq!(expected.len(), texts.len());
        let encoder =
            TextEncoder::load(&tokenizer_path(name), BosPolicy::Never, false, false).unwrap();
        let half = texts.len() / 2;
        let check = |range: std::ops::Range<usize>| {
            let mut ids = Vec::new();
            let mut total = 0;
            for i in range {
                encoder.encode(&texts[i], &mut ids).unwrap();
                assert_eq!(
                    (ids.len(), digest(&ids)),
                    expected[i],
                    "{name}: document {i} differs from the Python tokenizers library"
                );
                total += ids.len();
            }
            total
        };
        let num_tokens = std::thread::scope(|s| {
            let first = s.spawn(|| check(0..half));
            check(half..texts.len()) + first.join().unwrap()
        });
        assert!(num_tokens > 10_000_000, "{name}: {num_tokens} tokens");
    }
}

#[test]
fn flames_bos_policy_matches_add_special_tokens() {
    // flame's default (`--bos tokenizer`) is the library's add_special_tokens=True: <s> for Mistral.
    let texts: Vec<String> = corpus_texts().into_iter().step_by(25).collect();
    let dir = tempfile::tempdir().unwrap();
    let (texts_path, texts_sha) = write_texts(dir.path(), &texts);
    for name in ["mistral-7b-v0.1", "gpt2"] {
        let expected = reference(&tokenizer_path(name), &texts_path, &texts_sha, true);
        let encoder =
            TextEncoder::load(&tokenizer_path(name), BosPolicy::Tokenizer, false, false).unwrap();
        let mut ids = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            encoder.encode(text, &mut ids).unwrap();
            assert_eq!(
                (ids.len(), digest(&ids)),
                expected[i],
                "{name}: document {i}"
            );
            assert_eq!(ids[0] == 1, name == "mistral-7b-v0.1");
        }
    }
}

#[test]
fn special_token_strings_are_plain_text_unless_asked() {
    let gpt2 = tokenizer_path("gpt2");
    let mut ids = Vec::new();
    TextEncoder::load(&gpt2, BosPolicy::Never, false, false)
        .unwrap()
        .encode("a<|endoftext|>b", &mut ids)
        .unwrap();
    assert!(!ids.contains(&50256), "{ids:?}");
    TextEncoder::load(&gpt2, BosPolicy::Never, false, true)
        .unwrap()
        .encode("a<|endoftext|>b", &mut ids)
        .unwrap();
    assert!(ids.contains(&50256), "{ids:?}");
    let mistral = TextEncoder::load(
        &tokenizer_path("mistral-7b-v0.1"),
        BosPolicy::Always,
        true,
        false,
    )
    .unwrap();
    assert_eq!(
        (
            mistral.info().bos_id,
            mistral.info().eos_id,
            mistral.info().vocab_size
        ),
        (Some(1), Some(2), 32_000)
    );
    mistral.encode("Hello", &mut ids).unwrap();
    assert_eq!((ids[0], ids[ids.len() - 1]), (1, 2));
    let err = TextEncoder::load(&gpt2, BosPolicy::Always, false, false).unwrap_err();
    assert!(err.to_string().contains("no BOS token"), "{err}");
}
