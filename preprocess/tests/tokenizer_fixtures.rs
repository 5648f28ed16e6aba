//! Issue 18's exactness harness: for each tokenizer of `tests/data/tokenizers` (Qwen3, gpt-oss and GPT-4o's
//! o200k, DeepSeek-V3, Gemma-3, Llama-3, Phi-3, BERT; `PROVENANCE.md` says where each comes from), the ids
//! flame-prep gives, through whichever encoder `tokenize.rs` picks for it, equal those of the Python
//! `tokenizers` library recorded in the fixture's `ids.digest` (`tools/interop/tokenizer_golden.py`).
//!
//! Documents are encoded as `flame-prep tokenize` does by default (`--bos tokenizer`: what the
//! post-processor adds; special-token strings as text). Every golden text of `../shared/data/golden` is
//! checked, and from each corpus file of `../shared/data/corpus` (the two fineweb-schema parquet files and
//! the four jsonl files) [`SAMPLES`] documents at evenly spaced places, first and last included: about
//! 3.7 MB per tokenizer (2 MB of it the two long documents of `en-jargon-devil.jsonl`), which the
//! `tokenizers` fallback encodes in seconds in a debug build on two cores (all eight: about 15 s).
//! With `FLAME_FIXTURE_DOCUMENTS=all` every document is checked, and each file's token count and id stream
//! too (about 2 minutes for all eight).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use flame_preprocess::source::{open_reader, resolve_inputs};
use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use sha2::{Digest, Sha256};

use crate::util::{repo_root, shared};

/// Documents checked per corpus file (all of them with `FLAME_FIXTURE_DOCUMENTS=all`).
const SAMPLES: usize = 24;

/// One test per fixture, each with what `tokenize.rs` does with it today: the fast encoder it picks (`None`:
/// the `tokenizers` crate's) and whether it cuts long documents (`false`: encoded whole, memory unbounded).
/// Issue 18's fast path will change these columns; the ids must not change.
macro_rules! fixture_tests {
    ($($test:ident: $name:literal => ($fast_path:expr, $cuts_long_documents:expr),)*) => {
        $(
            #[test]
            fn $test() {
                check($name, $fast_path, $cuts_long_documents);
            }
        )*
        const FIXTURES: &[&str] = &[$($name),*];
    };
}

const CL100K_SPLIT: Option<&str> = Some("byte-level BPE, Cl100k { max_digits: 3 } split");
const QWEN_SPLIT: Option<&str> = Some("byte-level BPE, Cl100k { max_digits: 1 } split");
const BERT_UNCASED: Option<&str> = Some(
    "WordPiece (BertNormalizer: clean_text true, handle_chinese_chars true, strip_accents true, lowercase true)",
);

fixture_tests! {
    qwen3_ids_equal_the_reference: "qwen3" => (QWEN_SPLIT, false),
    gpt_oss_ids_equal_the_reference: "gpt-oss" => (None, false),
    gpt_4o_ids_equal_the_reference: "gpt-4o" => (None, false),
    deepseek_v3_ids_equal_the_reference: "deepseek-v3" => (None, false),
    gemma_3_ids_equal_the_reference: "gemma-3" => (None, false),
    llama_3_ids_equal_the_reference: "llama-3" => (CL100K_SPLIT, true),
    phi_3_ids_equal_the_reference: "phi-3" => (None, false),
    bert_base_uncased_ids_equal_the_reference: "bert-base-uncased" => (BERT_UNCASED, true),
}

fn fixtures_dir() -> PathBuf {
    repo_root().join("tests/data/tokenizers")
}

/// The directory where `tools/fetch-tokenizers.sh` has put every fixture's `<name>/tokenizer.json`.
pub fn tokenizers_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo_root().join("tools/fetch-tokenizers.sh"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tools/fetch-tokenizers.sh failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

/// A parsed `ids.digest` (its format: `tools/interop/tokenizer_golden.py`).
struct Golden {
    tokenizer_sha256: String,
    sources: Vec<Source>,
    /// Per document, in source order: the number of ids and the first 16 hex digits of their SHA-256.
    documents: Vec<(usize, String)>,
}

struct Source {
    /// Under `../shared/data`.
    path: String,
    sha256: String,
    num_documents: usize,
    num_tokens: usize,
    stream_sha256: String,
}

impl Golden {
    fn read(name: &str) -> Self {
        let path = fixtures_dir().join(name).join("ids.digest");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut tokenizer_sha256 = None;
        let (mut sources, mut documents) = (Vec::new(), Vec::new());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["tokenizer", tokenizer, sha256] => {
                    assert_eq!(*tokenizer, name, "{}", path.display());
                    tokenizer_sha256 = Some((*sha256).to_owned());
                }
                ["reference" | "affixes" | "total", ..] => {}
                [
                    "source",
                    path,
                    sha256,
                    num_documents,
                    num_tokens,
                    stream_sha256,
                ] => {
                    sources.push(Source {
                        path: (*path).to_owned(),
                        sha256: (*sha256).to_owned(),
                        num_documents: num_documents.parse().unwrap(),
                        num_tokens: num_tokens.parse().unwrap(),
                        stream_sha256: (*stream_sha256).to_owned(),
                    });
                }
                [num_tokens, sha] => {
                    documents.push((num_tokens.parse().unwrap(), (*sha).to_owned()));
                }
                _ => panic!("{}: unexpected line {line:?}", path.display()),
            }
        }
        let golden = Self {
            tokenizer_sha256: tokenizer_sha256
                .unwrap_or_else(|| panic!("{}: no tokenizer line", path.display())),
            sources,
            documents,
        };
        let num_documents: usize = golden.sources.iter().map(|s| s.num_documents).sum();
        assert_eq!(golden.documents.len(), num_documents, "{}", path.display());
        golden
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn id_bytes(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// A file under `../shared/data` whose documents the digests cover.
struct SourceTexts {
    path: String,
    /// Read by flame-prep's own readers.
    texts: Vec<String>,
    sha256: String,
}

/// The texts of the source at `path` (under `../shared/data`); all are read once per process.
fn texts(path: &str) -> &'static SourceTexts {
    static CORPUS: OnceLock<Vec<SourceTexts>> = OnceLock::new();
    let corpus = CORPUS.get_or_init(|| {
        corpus_files()
            .into_iter()
            .map(|rel| {
                let file = shared().join("data").join(&rel);
                let sha256 = sha256_hex(&std::fs::read(&file).unwrap());
                let inputs = resolve_inputs(&file.to_string_lossy(), "train").unwrap();
                assert_eq!(inputs.len(), 1, "{rel}");
                let mut reader = open_reader(&inputs[0], 0, None).unwrap();
                let mut records = Vec::new();
                while reader.read_batch(&mut records, 1024, usize::MAX).unwrap() {}
                let texts = records
                    .into_iter()
                    .map(|r| String::from(r.unwrap().text))
                    .collect();
                SourceTexts {
                    path: rel,
                    texts,
                    sha256,
                }
            })
            .collect()
    });
    corpus
        .iter()
        .find(|source| source.path == path)
        .unwrap_or_else(|| panic!("{path}: not a file of ../shared/data/corpus or golden"))
}

/// The files whose documents the digests cover, under `../shared/data`, in the digests' order: the corpus's
/// parquet files, then its jsonl files, each in name order, then the golden texts.
fn corpus_files() -> Vec<String> {
    let data = shared().join("data");
    let mut parquet = BTreeSet::new();
    let mut jsonl = BTreeSet::new();
    let mut stack = vec![data.join("corpus")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(&data)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            match path.extension().and_then(|e| e.to_str()) {
                _ if path.is_dir() => stack.push(path),
                Some("parquet") => {
                    parquet.insert(rel);
                }
                Some("jsonl") => {
                    jsonl.insert(rel);
                }
                _ => {}
            }
        }
    }
    parquet
        .into_iter()
        .chain(jsonl)
        .chain(["golden/texts.jsonl".to_owned()])
        .collect()
}

/// `(source, index in source, index among all documents)` of the documents to check.
fn chosen_documents(golden: &Golden) -> Vec<(usize, usize, usize)> {
    let all = std::env::var("FLAME_FIXTURE_DOCUMENTS").is_ok_and(|v| v == "all");
    let mut chosen = Vec::new();
    let mut first = 0;
    for (s, source) in golden.sources.iter().enumerate() {
        let n = source.num_documents;
        let indices: BTreeSet<usize> = if all || source.path.starts_with("golden/") || n <= SAMPLES
        {
            (0..n).collect()
        } else {
            (0..SAMPLES).map(|k| k * (n - 1) / (SAMPLES - 1)).collect()
        };
        chosen.extend(indices.into_iter().map(|i| (s, i, first + i)));
        first += n;
    }
    chosen
}

fn check(name: &str, fast_path: Option<&str>, cuts_long_documents: bool) {
    let golden = Golden::read(name);
    let path = tokenizers_dir().join(name).join("tokenizer.json");
    assert_eq!(
        sha256_hex(&std::fs::read(&path).unwrap()),
        golden.tokenizer_sha256,
        "{name}: tokenizer.json is not the one the digest was made from"
    );
    let sources: Vec<&str> = golden.sources.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        sources,
        corpus_files(),
        "{name}: ../shared/data's files changed; regenerate the digests (tools/interop/tokenizer_golden.py)"
    );
    for source in &golden.sources {
        let read = texts(&source.path);
        assert_eq!(
            (read.texts.len(), &read.sha256),
            (source.num_documents, &source.sha256),
            "{name}: {} changed; regenerate the digests (tools/interop/tokenizer_golden.py)",
            source.path
        );
    }
    let encoder = TextEncoder::load(&path, BosPolicy::Tokenizer, false, false).unwrap();
    assert_eq!(encoder.fast_path().as_deref(), fast_path, "{name}: encoder");
    assert_eq!(
        encoder.cuts_long_documents(),
        cuts_long_documents,
        "{name}: long documents"
    );
    let chosen = chosen_documents(&golden);
    // Two workers, documents dealt alternately (the two long documents of en-jargon-devil go one each).
    let encoded: Vec<Vec<(usize, Vec<u32>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (chosen, golden, encoder) = (&chosen, &golden, &encoder);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for &(s, i, d) in chosen.iter().skip(w).step_by(2) {
                        let text = &texts(&golden.sources[s].path).texts[i];
                        let mut ids = Vec::new();
                        encoder.encode(text, &mut ids).unwrap();
                        out.push((d, ids));
                    }
                    out
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut encoded: Vec<(usize, Vec<u32>)> = encoded.into_iter().flatten().collect();
    encoded.sort_by_key(|(d, _)| *d);
    let mut differ = Vec::new();
    for (&(s, i, d), (_, ids)) in chosen.iter().zip(&encoded) {
        let got = (ids.len(), sha256_hex(&id_bytes(ids))[..16].to_owned());
        if got != golden.documents[d] {
            differ.push(format!(
                "{} #{i} ({} ids, reference {})",
                golden.sources[s].path,
                ids.len(),
                golden.documents[d].0
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{name}: {} of {} documents differ from the Python tokenizers library: {}",
        differ.len(),
        chosen.len(),
        differ.join("; ")
    );
    if chosen.len() == golden.documents.len() {
        let mut at = 0;
        for source in &golden.sources {
            let mut stream = Sha256::new();
            let mut num_tokens = 0;
            for (_, ids) in &encoded[at..at + source.num_documents] {
                stream.update(u32::try_from(ids.len()).unwrap().to_le_bytes());
                stream.update(id_bytes(ids));
                num_tokens += ids.len();
            }
            at += source.num_documents;
            assert_eq!(
                (num_tokens, hex::encode(stream.finalize())),
                (source.num_tokens, source.stream_sha256.clone()),
                "{name}: {}",
                source.path
            );
        }
    }
}

/// Each fixture directory has its test above, its digest, its place in `tools/fetch-tokenizers.sh` and
/// `PROVENANCE.md`, and its licence named there.
#[test]
fn every_tokenizer_fixture_has_a_test() {
    let mut dirs: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir() && e.file_name() != "licenses")
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut named: Vec<String> = FIXTURES.iter().map(|&n| n.to_owned()).collect();
    named.sort();
    assert_eq!(dirs, named);
    let fetch = std::fs::read_to_string(repo_root().join("tools/fetch-tokenizers.sh")).unwrap();
    let provenance = std::fs::read_to_string(fixtures_dir().join("PROVENANCE.md")).unwrap();
    for name in FIXTURES {
        assert!(
            fixtures_dir().join(name).join("ids.digest").is_file(),
            "{name}: no ids.digest"
        );
        assert!(
            fetch.contains(&format!("\"{name}|")),
            "{name}: not in fetch-tokenizers.sh"
        );
        assert!(
            provenance.contains(&format!("| `{name}` |")),
            "{name}: not in PROVENANCE.md's table"
        );
    }
}

/// Issue 18: Phi-3's non-special `</s>` takes the whitespace after it (`rstrip`), so a cut after `</s>\n`
/// would change the ids of the next piece (its text would be a new segment, normalized with a `▁` in
/// front); tokenizers with such added tokens are encoded whole.
#[test]
fn phi_3_is_not_cut_after_an_added_token_that_takes_the_line_break() {
    let path = tokenizers_dir().join("phi-3/tokenizer.json");
    let err = TextEncoder::load_with_chunk_bytes(&path, BosPolicy::Never, 1).unwrap_err();
    assert!(
        format!("{err:#}").contains("not a tokenizer whose documents can be cut"),
        "{err:#}"
    );
    let mut ids = Vec::new();
    TextEncoder::load(&path, BosPolicy::Never, false, false)
        .unwrap()
        .encode("x</s>\nabc", &mut ids)
        .unwrap();
    // The Python library's ids: `x`, `</s>` (with the `\n`), `▁abc`.
    assert_eq!(ids, [921, 2, 25638]);
}

/// Random text for Qwen3's pipeline: combining marks and precomposed letters (NFC composes, reorders and
/// maps singletons such as U+212B), the added tokens' strings, special-token strings (text) and fragments
/// of both.
fn qwen3_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let tokens = prop::sample::select(vec![
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "</tool_response>",
        "<think>",
        "</think>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|vision_pad|>",
        "<thin",
        "<|fim_",
        "</",
        "<|",
        "|>",
        "<",
        ">",
    ]);
    let pieces = prop_oneof![
        tokens.prop_map(str::to_owned),
        "[a-zA-Z]{1,8}",
        "[0-9]{1,4}",
        "[ \n\t]{1,3}",
        "[\u{0300}-\u{036f}\u{0323}\u{0301}\u{0345}\u{05b0}-\u{05bd}\u{0f71}-\u{0f75}]{1,3}",
        "[aeoAEOuUsSnN\u{03b1}\u{03c9}\u{0413}\u{1100}-\u{1112}\u{1161}-\u{1175}\u{11a8}-\u{11c2}]{1,3}",
        "[\u{00c0}-\u{00ff}\u{1e00}-\u{1eff}\u{ac00}-\u{ac40}\u{212a}\u{212b}\u{2126}\u{037e}\u{1fef}\u{0958}-\u{095f}\u{f900}-\u{f910}\u{2f800}-\u{2f810}]{1,3}",
        "['\u{2019}][sStTdD]{1,2}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
    #[test]
    fn qwen3_fast_path_gives_the_ids_of_the_tokenizers_crate(text in qwen3_text()) {
        static LOADED: OnceLock<(TextEncoder, tokenizers::Tokenizer)> = OnceLock::new();
        let (ours, theirs) = LOADED.get_or_init(|| {
            let path = tokenizers_dir().join("qwen3/tokenizer.json");
            let ours = TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap();
            assert_eq!(ours.fast_path().as_deref(), QWEN_SPLIT);
            let mut theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
            theirs.set_encode_special_tokens(true);
            (ours, theirs)
        });
        let mut ids = Vec::new();
        ours.encode(&text, &mut ids).unwrap();
        let want = theirs.encode_fast(text.as_str(), false).unwrap();
        proptest::prop_assert_eq!(&ids, want.get_ids());
    }
}
