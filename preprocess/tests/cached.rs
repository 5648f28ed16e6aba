//! Issue 18's cached path (`flame_preprocess::cached`): every shape the hand-written encoders refuse goes
//! through the `tokenizers` crate's components with the model run once per distinct pre-token, and gives
//! the crate's ids. Checked on random Unicode strings for a Unigram tokenizer of each layout, NFKC
//! byte-level BPE (Claude's, with a prefix space), BPE with `continuing_subword_prefix` (trained here), and a split regex no
//! hand-written scanner takes; and on the corpus documents in `tokenizer_fixtures`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use proptest::prelude::*;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::{NFKC, NormalizerWrapper};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, TokenizerImpl};

use crate::exactness::tokenizer_path;
use crate::tokenizer_fixtures::{texts, tokenizers_dir};
use crate::util::flame_prep;

/// A tokenizer on both sides: flame-prep's encoders (two policies) and the crate's.
struct Pair {
    name: String,
    ours: TextEncoder,
    ours_special: TextEncoder,
    theirs: tokenizers::Tokenizer,
}

impl Pair {
    fn load(name: &str, path: &Path) -> Self {
        let mut theirs = tokenizers::Tokenizer::from_file(path).unwrap();
        theirs.set_encode_special_tokens(true);
        Self {
            name: name.to_owned(),
            ours: TextEncoder::load(path, BosPolicy::Never, false, false).unwrap(),
            ours_special: TextEncoder::load(path, BosPolicy::Tokenizer, false, false).unwrap(),
            theirs,
        }
    }

    fn assert_same_ids(&self, text: &str) -> Result<(), TestCaseError> {
        for (ours, special) in [(&self.ours, false), (&self.ours_special, true)] {
            let mut ids = Vec::new();
            ours.encode(text, &mut ids).unwrap();
            let want = self.theirs.encode_fast(text, special).unwrap();
            prop_assert_eq!(&ids, want.get_ids(), "{} on {:?}", self.name, text);
        }
        Ok(())
    }
}

/// The temporary directory of the tokenizers made here, for the process's life.
fn made_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// cl100k's split with a look-behind no scanner implements: the crate's pre-tokenizer runs it.
fn look_behind_cl100k() -> PathBuf {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokenizer_path("cl100k_base")).unwrap()).unwrap();
    let split = &mut json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"];
    let pattern = split
        .as_str()
        .unwrap()
        .replace(r"\p{N}{1,3}", r"(?<=\s)\p{N}{1,2}|\p{N}{1,3}");
    *split = serde_json::Value::String(pattern);
    let path = made_dir().join("look-behind-cl100k.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    path
}

/// Claude's tokenizer with `add_prefix_space` on its `ByteLevel` pre-tokenizer, which the byte-level
/// encoder does not take (Claude's own goes there): NFKC and `ByteLevel` on the cached path.
fn claude_with_prefix_space() -> PathBuf {
    let path = tokenizers_dir().join("claude/tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["pre_tokenizer"]["add_prefix_space"] = true.into();
    let path = made_dir().join("claude-prefix-space.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    path
}

/// A BPE with `continuing_subword_prefix` `##` (and NFKC, whitespace-and-punctuation words), trained on
/// the golden texts: no registry package ships one.
fn subword_prefix_bpe() -> PathBuf {
    let path = made_dir().join("subword-prefix-bpe.json");
    let model = BPE::builder()
        .continuing_subword_prefix("##".to_owned())
        .unk_token("[UNK]".to_owned())
        .build()
        .unwrap();
    let mut tokenizer: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        tokenizers::processors::PostProcessorWrapper,
        tokenizers::decoders::DecoderWrapper,
    > = TokenizerImpl::new(model);
    tokenizer.with_normalizer(Some(NFKC)).unwrap();
    tokenizer.with_pre_tokenizer(Some(Whitespace));
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(3000)
        .min_frequency(2)
        .continuing_subword_prefix("##".to_owned())
        .special_tokens(vec![AddedToken::from("[UNK]", true)])
        .show_progress(false)
        .build();
    let golden = &texts("golden/texts.jsonl").texts;
    tokenizer.train(&mut trainer, golden.iter()).unwrap();
    tokenizer.save(&path, false).unwrap();
    path
}

fn pairs() -> &'static [Pair] {
    static PAIRS: OnceLock<Vec<Pair>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        let dir = tokenizers_dir();
        vec![
            Pair::load(
                "botchan-unigram",
                &dir.join("botchan-unigram/tokenizer.json"),
            ),
            Pair::load("kyoto-unigram", &dir.join("kyoto-unigram/tokenizer.json")),
            Pair::load("claude with a prefix space", &claude_with_prefix_space()),
            Pair::load("look-behind cl100k", &look_behind_cl100k()),
            Pair::load("subword-prefix BPE", &subword_prefix_bpe()),
        ]
    })
}

#[test]
fn the_shapes_without_a_hand_written_encoder_take_the_cached_path() {
    let paths: Vec<Option<String>> = pairs().iter().map(|p| p.ours.fast_path()).collect();
    assert_eq!(
        paths,
        [
            Some(
                "cached Unigram (normalizer Precompiled, pre-tokenizer [WhitespaceSplit, Metaspace], native)"
                    .to_owned()
            ),
            Some(
                "cached Unigram (normalizer NFKC, pre-tokenizer [Metaspace, Digits, Punctuation], native)"
                    .to_owned()
            ),
            Some("cached BPE (normalizer NFKC, pre-tokenizer ByteLevel, native)".to_owned()),
            Some("cached BPE (normalizer None, pre-tokenizer [Split, ByteLevel])".to_owned()),
            Some("cached BPE (normalizer NFKC, pre-tokenizer Whitespace, native)".to_owned()),
        ]
    );
}

/// Texts that hit each step: added tokens (special ones as text), NFKC's compatibility characters and
/// already normal text, digits, punctuation, runs of spaces, unknown characters.
#[test]
fn the_cached_path_gives_the_crate_ids_on_hand_picked_texts() {
    let texts = [
        "",
        " ",
        "Hello, world! 12345 people   in  2024.",
        "</s><s><unk> [UNK] <EOT>x<META>",
        "\u{fb01}ne \u{2460}\u{ff21}\u{ff11} caf\u{e9} cafe\u{301} \u{212b}",
        "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{6587}\u{7ae0}\u{3002}\u{30ab}\u{30bf}\u{30ab}\u{30ca}",
        "don't ##x a##b \u{2581}\u{2581} tab\tnew\nline\r\n",
        "\u{1F600}\u{200d}\u{1F3FB} \u{10FFFF}\u{e000}",
    ];
    for pair in pairs() {
        for text in texts {
            pair.assert_same_ids(text).unwrap();
        }
        // Twice: the second time every pre-token comes from the cache.
        for text in texts {
            pair.assert_same_ids(text).unwrap();
        }
    }
}

/// A model whose ids are not a function of the pre-token (BPE dropout is random) is never cached: the
/// crate's encoder runs, and says so.
#[test]
fn bpe_dropout_falls_back_to_the_crate_encoder() {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(look_behind_cl100k()).unwrap()).unwrap();
    json["model"]["dropout"] = serde_json::json!(0.5);
    let path = made_dir().join("dropout.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let ours = TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap();
    assert_eq!(ours.fast_path(), None);
}

/// The run says which path it takes: the cached one, or the crate's encoder with the reason.
#[test]
fn the_log_names_the_cached_path() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    std::fs::write(&input, "{\"text\": \"Hello cached world\"}\n").unwrap();
    let run = |tokenizer: &Path, out: &str| {
        flame_prep(&[
            "--dataset",
            input.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--output",
            dir.path().join(out).to_str().unwrap(),
            "--name",
            "x",
        ])
    };
    let cached = run(&tokenizers_dir().join("kyoto-unigram/tokenizer.json"), "a");
    assert_eq!(cached.code, 0, "{}", cached.stderr);
    assert!(
        cached.stderr.contains("using the cached path")
            && cached.stderr.contains(
                "cached Unigram (normalizer NFKC, pre-tokenizer [Metaspace, Digits, Punctuation], native)"
            ),
        "{}",
        cached.stderr
    );
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(look_behind_cl100k()).unwrap()).unwrap();
    json["model"]["dropout"] = serde_json::json!(0.5);
    let dropout = dir.path().join("dropout.json");
    std::fs::write(&dropout, serde_json::to_vec(&json).unwrap()).unwrap();
    let fallback = run(&dropout, "b");
    assert_eq!(fallback.code, 0, "{}", fallback.stderr);
    assert!(
        fallback.stderr.contains("BPE dropout is random")
            && fallback
                .stderr
                .contains("using the tokenizers crate's encoder"),
        "{}",
        fallback.stderr
    );
}

/// Random Unicode text, heavy in what normalizers and pre-tokenizers treat apart: spaces and other
/// whitespace, digits, punctuation, compatibility characters, the added tokens' strings.
pub fn unicode_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        "[a-zA-Z]{1,12}",
        "[0-9]{1,6}",
        "[ ]{1,5}",
        "[\t\n\r\u{b}\u{c}]{1,3}",
        "[\u{85}\u{a0}\u{1680}\u{2000}-\u{200b}\u{2028}\u{2029}\u{202f}\u{3000}\u{feff}]{1,3}",
        "['’][sStTrRvVmMlLdDeEſ]{1,2}",
        "[\u{4e00}-\u{4e60}\u{3040}-\u{30ff}\u{ac00}-\u{ac40}\u{1100}-\u{1112}\u{1161}-\u{1175}]{1,6}",
        "[\u{fb00}-\u{fb06}\u{2460}-\u{2473}\u{ff01}-\u{ff5e}\u{2160}-\u{2188}\u{00b2}\u{00bd}\u{212b}\u{2126}]{1,4}",
        "[A-ZÀ-ÖǄ-ǌʰ-ʸ\u{1d400}-\u{1d433}ΑΩαω]{1,4}",
        "[\u{0300}-\u{0310}\u{20d0}\u{0903}\u{0488}\u{093c}\u{0958}-\u{095f}]{1,2}",
        "[\u{1F600}-\u{1F64F}\u{1F3FB}\u{200d}\u{fe0f}]{1,3}",
        "[\u{2581}#]{1,3}",
        "[.,;:!?'\"()<>/\\\\-]{1,4}",
        prop::sample::select(vec![
            "</s>", "<s>", "<unk>", "[UNK]", "<EOT>", "<META>", "##"
        ])
        .prop_map(str::to_owned),
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_strings_get_the_ids_of_the_tokenizers_crate(text in unicode_text()) {
        for pair in pairs() {
            pair.assert_same_ids(&text)?;
        }
    }
}

/// A tokenizer `chunk.rs` knows how to cut but no hand-written encoder takes (GPT-2's with an
/// `end_of_word_suffix`, each byte's character with the suffix added to the vocabulary: no merge takes
/// it, so a word's last byte stays alone) has its long documents cut on the cached path too
/// (`CachedCut`), with the ids of the whole.
#[test]
fn the_cached_path_cuts_the_long_documents_chunk_rs_can_cut() {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokenizer_path("gpt2")).unwrap()).unwrap();
    json["model"]["end_of_word_suffix"] = serde_json::json!("</w>");
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let bytes: Vec<String> = vocab
        .keys()
        .filter(|k| k.chars().count() == 1)
        .cloned()
        .collect();
    for (id, byte) in (vocab.len()..).zip(bytes) {
        vocab.insert(format!("{byte}</w>"), serde_json::json!(id));
    }
    let path = made_dir().join("gpt2-word-suffix.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let ours = TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap();
    assert!(
        ours.fast_path()
            .is_some_and(|p| p.starts_with("cached BPE")),
        "{:?}",
        ours.fast_path()
    );
    assert!(ours.cuts_long_documents());
    let text = texts("corpus/jsonl/en-jargon-devil.jsonl").texts.join("\n");
    assert!(text.len() > flame_preprocess::chunk::CHUNK_BYTES);
    let mut ids = Vec::new();
    ours.encode(&text, &mut ids).unwrap();
    let mut theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
    theirs.set_encode_special_tokens(true);
    let want = theirs.encode_fast(text.as_str(), false).unwrap();
    assert_eq!(ids.len(), want.get_ids().len());
    assert!(ids == want.get_ids(), "the cut document's ids differ");
}
