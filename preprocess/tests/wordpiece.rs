//! Issue 18: BERT's WordPiece on flame-prep's fast path (`flame_preprocess::wordpiece`) gives the ids of the
//! `tokenizers` crate, for `bert-base-uncased` and for variants of it with the other `BertNormalizer` flags,
//! another subword prefix, a short word limit and a non-special added token; and cutting its long
//! documents (`flame_preprocess::chunk`) never changes an id.

use std::path::PathBuf;
use std::sync::OnceLock;

use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use proptest::prelude::*;

use crate::exactness::corpus_texts;
use crate::tokenizer_fixtures::tokenizers_dir;

fn bert_path() -> PathBuf {
    tokenizers_dir().join("bert-base-uncased/tokenizer.json")
}

/// `bert-base-uncased` and variants of it, as `tokenizer.json` texts.
fn variants() -> Vec<(&'static str, String)> {
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bert_path()).unwrap()).unwrap();
    let variant = |name: &'static str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut json = base.clone();
        edit(&mut json);
        (name, serde_json::to_string(&json).unwrap())
    };
    vec![
        variant("uncased", &|_| {}),
        variant("cased", &|j| j["normalizer"]["lowercase"] = false.into()),
        variant("lowercase, accents kept", &|j| {
            j["normalizer"]["strip_accents"] = false.into();
        }),
        variant("cased, accents stripped", &|j| {
            j["normalizer"]["lowercase"] = false.into();
            j["normalizer"]["strip_accents"] = true.into();
        }),
        variant("no cleaning, no CJK padding", &|j| {
            j["normalizer"]["clean_text"] = false.into();
            j["normalizer"]["handle_chinese_chars"] = false.into();
        }),
        variant("empty prefix, 7 characters, an added token", &|j| {
            j["model"]["continuing_subword_prefix"] = "".into();
            j["model"]["max_input_chars_per_word"] = 7.into();
            j["added_tokens"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                "id": 30522, "content": "<ent>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": false}));
        }),
    ]
}

/// Each variant's fast encoder (`BosPolicy::Tokenizer`: `[CLS]`, `[SEP]`) and the `tokenizers` crate's.
fn encoders() -> &'static [(&'static str, TextEncoder, tokenizers::Tokenizer)] {
    static ENCODERS: OnceLock<Vec<(&'static str, TextEncoder, tokenizers::Tokenizer)>> =
        OnceLock::new();
    ENCODERS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        variants()
            .into_iter()
            .map(|(name, json)| {
                let path = dir.path().join("tokenizer.json");
                std::fs::write(&path, &json).unwrap();
                let ours = TextEncoder::load(&path, BosPolicy::Tokenizer, false, false).unwrap();
                assert!(
                    ours.fast_path().is_some_and(|f| f.starts_with("WordPiece")),
                    "{name}: {:?}",
                    ours.fast_path()
                );
                let mut theirs = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
                theirs.set_encode_special_tokens(true);
                (name, ours, theirs)
            })
            .collect()
    })
}

fn assert_same_ids(variant: usize, text: &str) -> Result<(), TestCaseError> {
    let (name, ours, theirs) = &encoders()[variant];
    let mut ids = Vec::new();
    ours.encode(text, &mut ids).unwrap();
    let want = theirs.encode_fast(text, true).unwrap();
    prop_assert_eq!(&ids, want.get_ids(), "{} on {:?}", name, text);
    Ok(())
}

/// Random text for BERT's pipeline: cased and accented letters (some lowercase to two characters,
/// some decompose), combining marks (nonspacing, and spacing ones with a combining class, which NFD
/// reorders), CJK ideographs and their compatibility forms, Hangul, every kind of whitespace, characters
/// clean-text drops, ASCII and Unicode punctuation and symbols, long words, special-token strings.
fn bert_text() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "[CLS]",
        "[SEP]",
        "[UNK]",
        "[MASK]",
        "[PAD]",
        "##",
        "<ent>",
        "<en",
        "[",
        "]",
        "#",
        "'s",
        "n't",
        "\u{2019}ll",
    ]);
    let pieces = prop_oneof![
        tokens.prop_map(str::to_owned),
        "[a-zA-Z]{1,8}",
        "[a-z]{1,3}",
        "[a-zA-Z\u{e9}]{95,110}",
        "[0-9]{1,4}",
        "[\u{c0}-\u{ff}\u{130}\u{131}\u{1c4}-\u{1cc}\u{3a3}\u{3c2}\u{3c3}\u{390}\u{1e00}-\u{1eff}\u{212a}\u{212b}\u{2126}\u{132}\u{149}\u{fb00}-\u{fb06}\u{1e9e}\u{400}-\u{45f}]{1,4}",
        "[ \t\n\r\u{b}\u{c}\u{85}\u{a0}\u{1680}\u{2000}-\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}\u{180e}\u{1c}-\u{1f}]{1,3}",
        "[\u{0}\u{1}\u{7f}\u{9f}\u{ad}\u{200b}-\u{200f}\u{fffd}\u{feff}\u{e000}\u{f8ff}\u{e0001}]{1,2}",
        "[\u{300}-\u{36f}\u{1d165}-\u{1d169}\u{1d16d}-\u{1d172}\u{f71}-\u{f75}\u{903}\u{93c}\u{94d}\u{5b0}-\u{5bd}\u{20d0}-\u{20f0}\u{1d15e}-\u{1d164}]{1,3}",
        "[\u{4e00}-\u{4e10}\u{9fa0}-\u{9fff}\u{3400}-\u{3405}\u{f900}-\u{f910}\u{fa6e}-\u{fa75}\u{2f800}-\u{2f805}\u{20000}-\u{20005}\u{3040}-\u{3050}\u{ac00}-\u{ac05}\u{1100}-\u{1105}]{1,3}",
        "[!-/:-@\\[-`{-~\u{a1}\u{bf}\u{ab}\u{bb}\u{2014}\u{2013}\u{2018}-\u{201f}\u{2026}\u{3001}\u{3002}\u{300c}\u{300d}\u{30fb}\u{203f}\u{2040}\u{2e3a}\u{ff01}\u{ff1f}\u{a7}\u{b6}\u{b0}\u{a9}\u{ae}\u{2122}\u{20ac}\u{a3}\u{a5}\u{37e}\u{387}\u{1fef}\u{1f600}]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]
    #[test]
    fn bert_fast_path_gives_the_ids_of_the_tokenizers_crate(
        variant in 0..6usize,
        text in bert_text(),
    ) {
        assert_same_ids(variant, &text)?;
    }
}

/// The cases the module documentation argues about, for every variant.
#[test]
fn bert_fast_path_handles_reordering_dropped_characters_and_long_words() {
    let long = "a".repeat(100);
    let texts = [
        // U+1D16D (class 226) and U+1D165 (216) are reordered by NFD across the dropped `\0`/`\x01`.
        "x\u{1d16d}\0\u{1d165}y",
        "x\u{1d16d}\u{1}\u{1d165} y\u{1d16d}\u{301}\u{1d165}",
        "\u{e9}\u{1d16d}\u{1d165}\u{e9}",
        "\u{130}stanbul \u{130}\u{307} K\u{212a}\u{212b}",
        "a\u{200b}b c\u{ad}d e\u{feff}f",
        "\u{1d15e}\u{1d16d}",
        "\u{f900}\u{4e00}x\u{20000}",
        "don't [CLS] x[SEP]y ## \u{2019}s",
        &long,
        &format!("{long}b"),
        &format!("{long}\u{301}b {long}\u{e9}"),
        "",
        " \t\n",
    ];
    for variant in 0..encoders().len() {
        for text in texts {
            assert_same_ids(variant, text).unwrap();
        }
    }
}

/// Texts around the cut rule (a `\n` after a visible ASCII character, before an ASCII letter) with BERT's
/// characters on either side.
fn cut_text() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "a",
        "Z",
        "The",
        "'s",
        "7",
        "\n",
        "\n\n",
        " ",
        "\t",
        "\r\n",
        ".",
        "!?",
        "\u{e9}",
        "E\u{301}",
        "\u{301}",
        "\u{1d165}",
        "\u{1d16d}",
        "\0",
        "\u{200b}",
        "\u{7f}",
        "\u{4e00}",
        "\u{3000}",
        "[CLS]",
        "##",
    ]);
    prop::collection::vec(pieces, 0..80).prop_map(|v| v.concat())
}

fn cut_and_whole(chunk_bytes: usize) -> (TextEncoder, TextEncoder) {
    let path = bert_path();
    let whole = TextEncoder::load(&path, BosPolicy::Tokenizer, false, false).unwrap();
    assert!(whole.cuts_long_documents());
    let cut = TextEncoder::load_with_chunk_bytes(&path, BosPolicy::Tokenizer, chunk_bytes).unwrap();
    (cut, whole)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn bert_texts_cut_into_tiny_pieces_keep_their_ids(text in cut_text()) {
        static ENCODERS: OnceLock<(TextEncoder, TextEncoder)> = OnceLock::new();
        let (cut, whole) = ENCODERS.get_or_init(|| cut_and_whole(1));
        let (mut cut_ids, mut whole_ids) = (Vec::new(), Vec::new());
        cut.encode(&text, &mut cut_ids).unwrap();
        whole.encode(&text, &mut whole_ids).unwrap();
        prop_assert_eq!(&cut_ids, &whole_ids, "on {:?}", text);
    }
}

#[test]
fn bert_corpus_documents_cut_into_small_pieces_keep_their_ids() {
    let (cut, whole) = cut_and_whole(64);
    let texts = corpus_texts();
    let mut total = 0;
    let (mut cut_ids, mut whole_ids) = (Vec::new(), Vec::new());
    let mut checked = 0;
    for text in texts.iter().step_by((texts.len() / 400).max(1)) {
        if !text.contains('\n') {
            continue;
        }
        total += text.len();
        if total > 2 << 20 {
            break;
        }
        cut.encode(text, &mut cut_ids).unwrap();
        whole.encode(text, &mut whole_ids).unwrap();
        assert_eq!(cut_ids, whole_ids, "document {checked}");
        checked += 1;
    }
    assert!(checked > 100, "{checked} documents");
}
