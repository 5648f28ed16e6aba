//! Issue 18's exactness harness: for each tokenizer of `tests/data/tokenizers` (Qwen3, gpt-oss and GPT-4o's
//! o200k, DeepSeek-V3, Gemma-3, Llama-3, Phi-3, BERT; Claude and two Unigram tokenizers on the cached path;
//! `PROVENANCE.md` says where each comes from), the ids
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

use flame_preprocess::pretok::{self, Pattern};
use flame_preprocess::probe::Probes;
use flame_preprocess::source::{open_reader, resolve_inputs};
use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use sha2::{Digest, Sha256};
use tokenizers::utils::SysRegex;

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
const SENTENCEPIECE: Option<&str> = Some("SentencePiece-style BPE");
const O200K_SPLIT: Option<&str> = Some("byte-level BPE, O200k split");
const DEEPSEEK_SPLIT: Option<&str> = Some("byte-level BPE, DeepSeek split");
const BERT_UNCASED: Option<&str> = Some(
    "WordPiece (BertNormalizer: clean_text true, handle_chinese_chars true, strip_accents true, lowercase true)",
);

const T5_UNIGRAM: Option<&str> = Some(
    "cached Unigram (normalizer Precompiled, pre-tokenizer [WhitespaceSplit, Metaspace], native)",
);
const NFKC_UNIGRAM: Option<&str> = Some(
    "cached Unigram (normalizer NFKC, pre-tokenizer [Metaspace, Digits, Punctuation], native)",
);
const GPT2_SPLIT: Option<&str> = Some("byte-level BPE, Gpt2 split");

fixture_tests! {
    qwen3_ids_equal_the_reference: "qwen3" => (QWEN_SPLIT, false),
    gpt_oss_ids_equal_the_reference: "gpt-oss" => (O200K_SPLIT, true),
    gpt_4o_ids_equal_the_reference: "gpt-4o" => (O200K_SPLIT, true),
    deepseek_v3_ids_equal_the_reference: "deepseek-v3" => (DEEPSEEK_SPLIT, true),
    gemma_3_ids_equal_the_reference: "gemma-3" => (SENTENCEPIECE, true),
    llama_3_ids_equal_the_reference: "llama-3" => (CL100K_SPLIT, true),
    phi_3_ids_equal_the_reference: "phi-3" => (SENTENCEPIECE, true),
    bert_base_uncased_ids_equal_the_reference: "bert-base-uncased" => (BERT_UNCASED, true),
    botchan_unigram_ids_equal_the_reference: "botchan-unigram" => (T5_UNIGRAM, false),
    kyoto_unigram_ids_equal_the_reference: "kyoto-unigram" => (NFKC_UNIGRAM, false),
    claude_ids_equal_the_reference: "claude" => (GPT2_SPLIT, false),
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
pub struct SourceTexts {
    path: String,
    /// Read by flame-prep's own readers.
    pub texts: Vec<String>,
    sha256: String,
}

/// The texts of the source at `path` (under `../shared/data`); all are read once per process.
pub fn texts(path: &str) -> &'static SourceTexts {
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
pub fn corpus_files() -> Vec<String> {
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
    // What the encoder says of the tokenizer without building the crate's (read from the JSON) is what
    // the crate's says.
    let bytes = std::fs::read(&path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let reference = tokenizers::Tokenizer::from_bytes(&bytes).unwrap();
    // (The cached path builds the crate's tokenizer anyway, and asks it where the JSON declines.)
    let from_json = Probes::of_json(&json, None).unwrap();
    if from_json.is_some() || !fast_path.is_some_and(|f| f.starts_with("cached ")) {
        assert_eq!(
            from_json,
            Some(Probes::of_tokenizer(&reference, None).unwrap()),
            "{name}: probes"
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
/// front); `chunk.rs` makes no cut there.
#[test]
fn phi_3_is_not_cut_after_an_added_token_that_takes_the_line_break() {
    let path = tokenizers_dir().join("phi-3/tokenizer.json");
    let cut = TextEncoder::load_with_chunk_bytes(&path, BosPolicy::Never, 1).unwrap();
    let mut ids = Vec::new();
    cut.encode("x</s>\nabc", &mut ids).unwrap();
    // The Python library's ids: `x`, `</s>` (with the `\n`), `▁abc`.
    assert_eq!(ids, [921, 2, 25638]);
    cut.encode("x.\nabc", &mut ids).unwrap();
    assert_eq!(ids, [921, 29889, 13, 10736], "cut after the line break");
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

/// `text`'s ids from flame-prep's encoder for fixture `name`, which must take `fast_path`, and from the
/// `tokenizers` crate (special-token strings as text on both sides); the two loaded once into `loaded`.
fn ours_and_theirs(
    loaded: &OnceLock<(TextEncoder, tokenizers::Tokenizer)>,
    name: &str,
    fast_path: Option<&str>,
    text: &str,
) -> (Vec<u32>, Vec<u32>) {
    let (ours, theirs) = loaded.get_or_init(|| {
        let path = tokenizers_dir().join(name).join("tokenizer.json");
        let ours = TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap();
        assert_eq!(ours.fast_path().as_deref(), fast_path);
        let mut theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
        theirs.set_encode_special_tokens(true);
        (ours, theirs)
    });
    let mut ids = Vec::new();
    ours.encode(text, &mut ids).unwrap();
    let want = theirs.encode_fast(text, false).unwrap();
    (ids, want.get_ids().to_vec())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
    #[test]
    fn qwen3_fast_path_gives_the_ids_of_the_tokenizers_crate(text in qwen3_text()) {
        static LOADED: OnceLock<(TextEncoder, tokenizers::Tokenizer)> = OnceLock::new();
        let (ours, theirs) = ours_and_theirs(&LOADED, "qwen3", QWEN_SPLIT, &text);
        proptest::prop_assert_eq!(ours, theirs);
    }

    /// Claude's NFKC byte-level BPE on the byte-level encoder, on Qwen3's normalization-heavy text
    /// (compatibility characters, combining marks, Hangul jamo) and a ligature, a circled digit or a
    /// fullwidth letter, which NFKC alone rewrites.
    #[test]
    fn claude_fast_path_gives_the_ids_of_the_tokenizers_crate(
        text in qwen3_text(),
        compatibility in "[\u{fb01}\u{2460}\u{ff21}]?",
    ) {
        static LOADED: OnceLock<(TextEncoder, tokenizers::Tokenizer)> = OnceLock::new();
        let text = text + &compatibility;
        let (ours, theirs) = ours_and_theirs(&LOADED, "claude", GPT2_SPLIT, &text);
        proptest::prop_assert_eq!(ours, theirs);
    }
}

/// Random text for the SentencePiece-style pipelines (Phi-3, Gemma-3): the added tokens' strings glued
/// into text, with fragments and special-token strings (text); runs of 1–40 spaces, line breaks, tabs,
/// `▁` and mixes of them (Gemma-3's added runs, Phi-3's `rstrip`), other Unicode whitespace; characters
/// with no piece of their own (byte fallback: rare scripts, emoji); leading and trailing spaces.
fn sentencepiece_text(
    tokens: Vec<&'static str>,
) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let pieces = prop_oneof![
        prop::sample::select(tokens).prop_map(str::to_owned),
        "[a-zA-Z]{1,8}",
        "[0-9]{1,4}",
        "[ ]{1,40}",
        "[\n]{1,40}",
        "[\t]{1,40}",
        "[\u{2581}]{1,40}",
        "[ \n\t\r\u{2581}]{1,40}",
        "[\u{3000}\u{a0}\u{85}\u{2028}\u{200b}\u{feff}\x0b\x0c]{1,3}",
        "[.,;:!?'\"()\\[\\]{}<>/|=_-]{1,3}",
        "['\u{2019}][sStTdD]{1,2}",
        "[\u{e0}-\u{ff}\u{3b1}-\u{3c9}\u{430}-\u{44f}\u{4e00}-\u{4e40}\u{ac00}-\u{ac20}\u{300}-\u{36f}]{1,4}",
        "[\u{1680}-\u{169c}\u{a500}-\u{a52b}\u{10900}-\u{1091b}\u{1f300}-\u{1f64f}\u{1f900}-\u{1f9ff}]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

/// Random text for o200k's split: letters of every case class (`Lu`, `Ll`, `Lt` such as `ǅ`, `Lm` such
/// as `ʰ`, `Lo`) and marks in mixed order, apostrophes before contractions in odd cases and folds (`'S`,
/// `'ſ`, `'LL`, `'rE`) and before near misses, digit runs, `/` after punctuation and line breaks,
/// whitespace and line-break runs, and the special tokens' strings (text).
fn o200k_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let pieces = prop_oneof![
        "[a-zA-Z]{1,8}",
        "[A-Z]{1,3}[a-z]{0,3}",
        "[A-ZÀ-ÖØ-Þa-zß-öø-ÿ\u{01c4}-\u{01cc}\u{01f1}-\u{01f3}\u{1f88}-\u{1f8f}\u{02b0}-\u{02c1}\u{3005}\u{05d0}-\u{05ea}\u{4e00}-\u{4e10}\u{0300}-\u{0310}\u{0903}\u{20d0}\u{1d400}-\u{1d433}ΑΩαωſK]{1,4}",
        "['’][sStTmMdDſ]",
        "['’][rRvVlL][eElLſ]",
        "'{1,2}[a-zA-Z\u{017f}\u{212a}]{0,3}",
        "[0-9]{1,7}",
        "[\u{0660}-\u{0669}\u{2160}-\u{2188}\u{00b2}\u{00bd}\u{1d7ce}]{1,4}",
        "[.,;:!?\"()<>/\\\\-]{1,3}/{0,2}",
        "[ \t\n\r\u{b}\u{c}\u{85}\u{a0}\u{2028}\u{3000}/]{1,4}",
        "[ ]{1,5}",
        "[\n\r]{1,3}/",
        "[\u{1F600}-\u{1F64F}\u{200d}\u{fe0f}]{1,2}",
        prop::sample::select(vec![
            "<|endoftext|>",
            "<|startoftext|>",
            "<|return|>",
            "<|endofprompt|>",
            "<|"
        ])
        .prop_map(str::to_owned),
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

/// The fast path's ids and the `tokenizers` crate's for `text`, both without the post-processor's.
fn both_ids(name: &str, text: &str) -> (Vec<u32>, Vec<u32>) {
    type Pair = std::sync::Arc<(TextEncoder, tokenizers::Tokenizer)>;
    static LOADED: OnceLock<std::sync::Mutex<Vec<(String, Pair)>>> = OnceLock::new();
    let loaded = {
        let mut all = LOADED.get_or_init(Default::default).lock().unwrap();
        if let Some((_, pair)) = all.iter().find(|(n, _)| n == name) {
            pair.clone()
        } else {
            let path = tokenizers_dir().join(name).join("tokenizer.json");
            let ours = TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap();
            assert_eq!(ours.fast_path().as_deref(), SENTENCEPIECE, "{name}");
            let mut theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
            theirs.set_encode_special_tokens(true);
            let pair = std::sync::Arc::new((ours, theirs));
            all.push((name.to_owned(), pair.clone()));
            pair
        }
    };
    let (ours, theirs) = &*loaded;
    let mut ids = Vec::new();
    ours.encode(text, &mut ids).unwrap();
    (
        ids,
        theirs.encode_fast(text, false).unwrap().get_ids().to_vec(),
    )
}

/// Spot checks of what the module documentation of `spm_bpe` says the `tokenizers` crate does.
#[test]
fn sentencepiece_added_tokens_cut_the_text_as_the_tokenizers_crate_does() {
    for text in [
        "x</s>\nabc",
        "x</s>",
        "</s>abc",
        " </s>  abc",
        "a</s> </s>b",
        "x <|end|>  y",
    ] {
        let (ours, theirs) = both_ids("phi-3", text);
        assert_eq!(ours, theirs, "phi-3 {text:?}");
    }
    // The Python library's ids: `x`, `</s>` with the line break, `▁abc` (a new segment: `▁` again).
    assert_eq!(both_ids("phi-3", "x</s>\nabc").0, [921, 2, 25638]);
    for text in [
        "a  b",
        "a\u{2581}\u{2581}b",
        "a\n\n\nb",
        "  lead",
        "trail  ",
        "<unused5>x<bos>y<mask>",
    ] {
        let (ours, theirs) = both_ids("gemma-3", text);
        assert_eq!(ours, theirs, "gemma-3 {text:?}");
    }
    assert_eq!(
        both_ids("gemma-3", "<unused5>x<bos>y<mask>").0,
        [11, 236_781, 236_820, 46757, 236_813, 236_762, 4]
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
    #[test]
    fn phi_3_fast_path_gives_the_ids_of_the_tokenizers_crate(text in sentencepiece_text(vec![
        "</s>", "<s>", "<unk>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>",
        "</s", "</", "<|", "|>", "<", ">", "s>",
    ])) {
        let (ours, theirs) = both_ids("phi-3", &text);
        proptest::prop_assert_eq!(ours, theirs);
    }

    #[test]
    fn gemma_3_fast_path_gives_the_ids_of_the_tokenizers_crate(text in sentencepiece_text(vec![
        "<unused0>", "<unused99>", "<unused6241>", "<unused6242>", "<mask>", "[multimodal]", "<h1>",
        "</h6>", "<table>", "</blockquote>", "<s>", "</s>", "<bos>", "<eos>", "<pad>", "<start_of_turn>",
        "<end_of_turn>", "<image_soft_token>", "<start_of_image>", "<unused", "<unused1", "<h", "</", "<",
        ">", "[multi", "\u{2581}", "\u{2581}\u{2581}",
    ])) {
        let (ours, theirs) = both_ids("gemma-3", &text);
        proptest::prop_assert_eq!(ours, theirs);
    }
}

/// Phi-3 and Gemma-3 cut into pieces of one byte (the `tokenizers` encoder with `chunk.rs`'s cuts) and
/// encoded whole by the fast path.
fn cut_and_whole_ids(name: &str, text: &str) -> (Vec<u32>, Vec<u32>) {
    thread_local! {
        static CUT: std::cell::RefCell<Vec<(String, TextEncoder, TextEncoder)>> = const {
            std::cell::RefCell::new(Vec::new())
        };
    }
    CUT.with(|loaded| {
        let mut loaded = loaded.borrow_mut();
        if !loaded.iter().any(|(n, _, _)| n == name) {
            let path = tokenizers_dir().join(name).join("tokenizer.json");
            let whole = TextEncoder::load(&path, BosPolicy::Tokenizer, false, false).unwrap();
            let cut = TextEncoder::load_with_chunk_bytes(&path, BosPolicy::Tokenizer, 1).unwrap();
            loaded.push((name.to_owned(), whole, cut));
        }
        let (_, whole, cut) = loaded.iter().find(|(n, _, _)| n == name).unwrap();
        let (mut whole_ids, mut cut_ids) = (Vec::new(), Vec::new());
        whole.encode(text, &mut whole_ids).unwrap();
        cut.encode(text, &mut cut_ids).unwrap();
        (cut_ids, whole_ids)
    })
}

/// Text with many hard boundaries (a visible character, `\n`, a letter) next to what could break them.
fn boundary_text(tokens: Vec<&'static str>) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let pieces = prop_oneof![
        4 => prop::sample::select(vec![".\na", "x\nThe", ">\nb", "\n", "\n\n", " \n", "\t", " ", "  "])
            .prop_map(str::to_owned),
        2 => prop::sample::select(tokens).prop_map(str::to_owned),
        2 => "[a-zA-Z]{1,5}",
        1 => "[.,!?<>]{1,2}",
        1 => "[\u{2581}\u{e9}\u{65e5}\u{1f600}\u{3000}]{1,2}",
    ];
    prop::collection::vec(pieces, 0..40).prop_map(|p| p.concat())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn phi_3_cut_at_hard_boundaries_keeps_the_ids(text in boundary_text(vec![
        "</s>", "</s>\n", "<s>", "<|end|>", "<|end|>\n", "<|user|>",
    ])) {
        let (cut, whole) = cut_and_whole_ids("phi-3", &text);
        proptest::prop_assert_eq!(cut, whole);
    }

    #[test]
    fn gemma_3_cut_at_hard_boundaries_keeps_the_ids(text in boundary_text(vec![
        "<unused7>", "<mask>", "<h1>", "</h1>\n", "<s>", "</s>\n", "<bos>", "<start_of_turn>", "\u{2581}\u{2581}",
    ])) {
        let (cut, whole) = cut_and_whole_ids("gemma-3", &text);
        proptest::prop_assert_eq!(cut, whole);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
    #[test]
    fn o200k_fast_path_gives_the_ids_of_the_tokenizers_crate(text in o200k_text()) {
        static LOADED: OnceLock<(SysRegex, Vec<(TextEncoder, tokenizers::Tokenizer)>)> = OnceLock::new();
        let (regex, loaded) = LOADED.get_or_init(|| {
            let loaded = ["gpt-oss", "gpt-4o"].iter().map(|name| {
                let path = tokenizers_dir().join(name).join("tokenizer.json");
                let ours = TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap();
                assert_eq!(ours.fast_path().as_deref(), O200K_SPLIT, "{name}");
                let mut theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
                theirs.set_encode_special_tokens(true);
                (ours, theirs)
            }).collect();
            (SysRegex::new(pretok::O200K).unwrap(), loaded)
        });
        let mut pieces = Vec::new();
        Pattern::O200k.split(&text, |piece| pieces.push(piece));
        let want: Vec<&str> = regex.find_iter(&text).map(|(s, e)| &text[s..e]).collect();
        proptest::prop_assert_eq!(pieces, want);
        for (ours, theirs) in loaded {
            let mut ids = Vec::new();
            ours.encode(&text, &mut ids).unwrap();
            let want = theirs.encode_fast(text.as_str(), false).unwrap();
            proptest::prop_assert_eq!(&ids, want.get_ids(), "{}", ours.info().name);
        }
    }
}

/// gpt-oss and GPT-4o, each whole through the fast path and cut at every hard boundary (`chunk.rs`, one
/// byte per piece) through the `tokenizers` crate.
fn o200k_whole_and_cut() -> &'static [(TextEncoder, TextEncoder)] {
    static LOADED: OnceLock<Vec<(TextEncoder, TextEncoder)>> = OnceLock::new();
    LOADED.get_or_init(|| {
        ["gpt-oss", "gpt-4o"]
            .iter()
            .map(|name| {
                let path = tokenizers_dir().join(name).join("tokenizer.json");
                let whole = TextEncoder::load(&path, BosPolicy::Tokenizer, false, false).unwrap();
                assert_eq!(whole.fast_path().as_deref(), O200K_SPLIT, "{name}");
                let cut =
                    TextEncoder::load_with_chunk_bytes(&path, BosPolicy::Tokenizer, 1).unwrap();
                (whole, cut)
            })
            .collect()
    })
}

/// Corpus documents with line breaks, from every file, up to this many bytes per file.
const O200K_CUT_BYTES_PER_FILE: usize = 96 << 10;

#[test]
fn o200k_corpus_documents_cut_at_every_hard_boundary_keep_their_ids() {
    let mut chosen = Vec::new();
    for path in corpus_files() {
        let texts = &texts(&path).texts;
        let mut total = 0;
        for text in texts.iter().step_by((texts.len() / 40).max(1)) {
            if text.contains('\n') && total + text.len() <= O200K_CUT_BYTES_PER_FILE {
                total += text.len();
                chosen.push(text);
            }
        }
    }
    assert!(chosen.len() > 40, "{} documents", chosen.len());
    let (mut whole_ids, mut cut_ids) = (Vec::new(), Vec::new());
    for (whole, cut) in o200k_whole_and_cut() {
        for (i, text) in chosen.iter().enumerate() {
            whole.encode(text, &mut whole_ids).unwrap();
            cut.encode(text, &mut cut_ids).unwrap();
            assert_eq!(cut_ids, whole_ids, "{}: document {i}", whole.info().name);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
    #[test]
    fn o200k_random_texts_cut_at_every_hard_boundary_keep_their_ids(text in o200k_text()) {
        let (mut whole_ids, mut cut_ids) = (Vec::new(), Vec::new());
        for (whole, cut) in o200k_whole_and_cut() {
            whole.encode(&text, &mut whole_ids).unwrap();
            cut.encode(&text, &mut cut_ids).unwrap();
            proptest::prop_assert_eq!(&cut_ids, &whole_ids, "{}", whole.info().name);
        }
    }
}

/// Random text for DeepSeek-V3's three splits: runs of digits and other numbers of many lengths, CJK
/// characters with the edges of its three ranges and their neighbours, ASCII punctuation before Latin
/// letters, other punctuation and symbols, combining marks, whitespace and line-break runs, control and
/// format characters (the third split's gaps), contractions, the 14 non-special added tokens' strings,
/// special-token strings (text) and fragments of both.
fn deepseek_v3_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let tokens = prop::sample::select(vec![
        "<｜fim▁hole｜>",
        "<｜fim▁begin｜>",
        "<｜fim▁end｜>",
        "<｜User｜>",
        "<｜Assistant｜>",
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁end｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁outputs▁begin｜>",
        "<｜tool▁outputs▁end｜>",
        "<｜tool▁output▁begin｜>",
        "<｜tool▁output▁end｜>",
        "<｜tool▁sep｜>",
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜▁pad▁｜>",
        "<|EOT|>",
        "<｜tool▁",
        "<｜",
        "｜>",
        "▁",
        "<",
    ]);
    let cjk_edges = prop::sample::select(vec![
        '\u{4dff}', '\u{4e00}', '\u{4e01}', '\u{9fa4}', '\u{9fa5}', '\u{9fa6}', '\u{9fff}',
        '\u{303f}', '\u{3040}', '\u{3041}', '\u{309b}', '\u{309f}', '\u{30a0}', '\u{30a1}',
        '\u{30fb}', '\u{30fc}', '\u{30ff}', '\u{3100}', '\u{3007}', '\u{3001}', '\u{3002}',
        '\u{ff10}', '\u{f900}',
    ]);
    let pieces = prop_oneof![
        tokens.prop_map(str::to_owned),
        "[a-zA-Z]{1,8}",
        "[0-9]{1,8}",
        "[0-9\u{0660}-\u{0669}\u{00b2}\u{00bd}\u{2160}-\u{2163}\u{ff10}-\u{ff19}]{1,5}",
        prop::collection::vec(cjk_edges, 1..4).prop_map(|c| c.into_iter().collect()),
        "[\u{4e00}-\u{4e10}\u{3041}-\u{3050}\u{30a1}-\u{30b0}\u{9f9a}-\u{9fa5}]{1,4}",
        "[!-/:-@\\[-`{-~][a-zA-Z\u{e9}]{1,5}",
        "[!-/:-@\\[-`{-~]{1,3}",
        "[\u{ab}\u{bb}\u{bf}\u{a1}\u{2014}\u{2013}\u{2026}\u{2018}\u{2019}\u{201c}\u{201d}\u{20ac}\u{a3}\u{a9}\u{b0}\u{d7}\u{2192}\u{2211}\u{2260}\u{2605}\u{2665}\u{1f600}]{1,3}",
        "[a-z\u{e9}\u{df}\u{3b1}\u{436}\u{5d0}\u{e01}]{0,2}[\u{0300}-\u{036f}\u{20d0}\u{0483}\u{0e31}]{1,3}",
        "[ \n\r\t\u{a0}\u{3000}\u{2028}\u{85}\u{b}\u{c}]{1,4}",
        "[\r\n]{1,3}[a-zA-Z]{1,3}",
        "[\u{0}-\u{8}\u{e}\u{1f}\u{7f}\u{ad}\u{200b}-\u{200f}\u{feff}\u{e000}]{1,3}",
        "['\u{2019}]([sStTdDmM]|ll|re|ve)",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

fn deepseek_v3_path() -> PathBuf {
    tokenizers_dir().join("deepseek-v3/tokenizer.json")
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
    #[test]
    fn deepseek_v3_fast_path_gives_the_ids_of_the_tokenizers_crate(text in deepseek_v3_text()) {
        static LOADED: OnceLock<(TextEncoder, tokenizers::Tokenizer)> = OnceLock::new();
        let (ours, theirs) = LOADED.get_or_init(|| {
            let ours = TextEncoder::load(&deepseek_v3_path(), BosPolicy::Never, false, false).unwrap();
            assert_eq!(ours.fast_path().as_deref(), DEEPSEEK_SPLIT);
            let mut theirs = tokenizers::Tokenizer::from_file(deepseek_v3_path()).unwrap();
            theirs.set_encode_special_tokens(true);
            (ours, theirs)
        });
        let mut ids = Vec::new();
        ours.encode(&text, &mut ids).unwrap();
        let want = theirs.encode_fast(text.as_str(), false).unwrap();
        proptest::prop_assert_eq!(&ids, want.get_ids());
    }
}

/// DeepSeek-V3's long documents are cut (`chunk.rs` argues its three splits): whole documents (the fast
/// path) and the same documents cut into pieces of one byte's worth (the `tokenizers` encoder on each)
/// give the same ids.
fn deepseek_v3_whole_and_cut() -> &'static (TextEncoder, TextEncoder) {
    static LOADED: OnceLock<(TextEncoder, TextEncoder)> = OnceLock::new();
    LOADED.get_or_init(|| {
        let whole =
            TextEncoder::load(&deepseek_v3_path(), BosPolicy::Tokenizer, false, false).unwrap();
        assert_eq!(whole.fast_path().as_deref(), DEEPSEEK_SPLIT);
        let cut = TextEncoder::load_with_chunk_bytes(&deepseek_v3_path(), BosPolicy::Tokenizer, 1)
            .unwrap();
        (whole, cut)
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn deepseek_v3_cut_at_hard_boundaries_keeps_its_ids(text in deepseek_v3_text()) {
        let (whole, cut) = deepseek_v3_whole_and_cut();
        let (mut whole_ids, mut cut_ids) = (Vec::new(), Vec::new());
        whole.encode(&text, &mut whole_ids).unwrap();
        cut.encode(&text, &mut cut_ids).unwrap();
        proptest::prop_assert_eq!(cut_ids, whole_ids);
    }
}

#[test]
fn deepseek_v3_corpus_documents_cut_into_small_pieces_keep_their_ids() {
    let (whole, cut) = deepseek_v3_whole_and_cut();
    let (mut whole_ids, mut cut_ids) = (Vec::new(), Vec::new());
    let (mut num_documents, mut num_bytes) = (0, 0);
    for path in corpus_files() {
        for text in texts(&path).texts.iter().step_by(7) {
            if num_bytes > 1 << 20 || !text.contains('\n') {
                continue;
            }
            whole.encode(text, &mut whole_ids).unwrap();
            cut.encode(text, &mut cut_ids).unwrap();
            assert_eq!(cut_ids, whole_ids, "{path}: {text:.80?}");
            num_documents += 1;
            num_bytes += text.len();
        }
    }
    assert!(num_documents > 50, "{num_documents} documents");
}
