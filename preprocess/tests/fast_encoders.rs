//! The fast encoders (`flame_preprocess::spm_bpe`, `flame_preprocess::byte_bpe` with the scanners of
//! `flame_preprocess::pretok`) against the `tokenizers` crate and its regex engine, on random strings of
//! mixed scripts, cased letters and marks, numerals, whitespace runs, contractions, emoji and characters
//! outside the vocabulary. (Every golden text and corpus document goes through them in `exactness`.)

use flame_preprocess::pretok::{self, Pattern};
use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use proptest::prelude::*;
use tokenizers::utils::SysRegex;

use crate::exactness::{TOKENIZERS, tokenizer_path};

struct Loaded {
    ours: TextEncoder,
    theirs: tokenizers::Tokenizer,
}

fn loaded() -> &'static [Loaded] {
    static LOADED: std::sync::OnceLock<Vec<Loaded>> = std::sync::OnceLock::new();
    LOADED.get_or_init(|| {
        TOKENIZERS
            .iter()
            .map(|name| {
                let path = tokenizer_path(name);
                let mut theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
                theirs.set_encode_special_tokens(true);
                let ours = TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap();
                Loaded { ours, theirs }
            })
            .collect()
    })
}

#[test]
fn every_shared_tokenizer_takes_a_fast_path() {
    let paths: Vec<Option<String>> = loaded().iter().map(|l| l.ours.fast_path()).collect();
    assert_eq!(
        paths,
        [
            Some("byte-level BPE, Gpt2 split".to_owned()),
            Some("SentencePiece-style BPE".to_owned()),
            Some("byte-level BPE, Cl100k { max_digits: 3 } split".to_owned()),
            Some("byte-level BPE, Tekken split".to_owned()),
        ]
    );
}

#[test]
fn a_shape_without_a_hand_written_encoder_takes_the_cached_path_to_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokenizer_path("cl100k_base")).unwrap()).unwrap();
    // A pattern neither a scanner nor the general split implements (cl100k's with a look-behind).
    let split = &mut json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"];
    let pattern = split
        .as_str()
        .unwrap()
        .replace(r"\p{N}{1,3}", r"(?<=\s)\p{N}{1,2}|\p{N}{1,3}");
    *split = serde_json::Value::String(pattern);
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let ours = TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap();
    assert_eq!(
        ours.fast_path().as_deref(),
        Some("cached BPE (normalizer None, pre-tokenizer [Split, ByteLevel])")
    );
    let mut ids = Vec::new();
    ours.encode("In 2024, 12345 people", &mut ids).unwrap();
    let mut theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
    theirs.set_encode_special_tokens(true);
    let want = theirs.encode_fast("In 2024, 12345 people", false).unwrap();
    assert_eq!(ids, want.get_ids());
}

fn mixed_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        "[a-zA-Z]{1,12}",
        "[0-9]{1,6}",
        "[ ]{1,5}",
        "[\t\n\r\u{b}\u{c}]{1,3}",
        "[\u{85}\u{a0}\u{1680}\u{2000}-\u{200b}\u{2028}\u{2029}\u{202f}\u{3000}\u{feff}]{1,3}",
        "['’][sStTrRvVmMlLdDeEſ]{1,2}",
        "[\u{4e00}-\u{4e60}\u{3040}-\u{30ff}\u{ac00}-\u{ac40}]{1,6}",
        "[\u{0600}-\u{0620}\u{0900}-\u{0930}\u{0e00}-\u{0e40}]{1,5}",
        "[A-ZÀ-ÖǄ-ǌʰ-ʸ\u{1d400}-\u{1d433}ΑΩαω]{1,4}",
        "[\u{0300}-\u{0310}\u{20d0}\u{0903}\u{0488}]{1,2}",
        "[\u{0660}-\u{0669}\u{2160}-\u{2188}\u{00b2}\u{00bd}\u{1d7ce}]{1,4}",
        "[\u{1F600}-\u{1F64F}\u{1F3FB}\u{200d}\u{fe0f}]{1,3}",
        "[\u{2581}\u{0120}\u{010a}]{1,3}",
        "[\u{10000}-\u{10100}\u{e000}-\u{e010}\u{31350}\u{1e4d0}\u{11f00}]{1,2}",
        "[.,;:!?'\"()<>/\\\\-]{1,4}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

const PATTERNS: [(&str, Pattern); 4] = [
    (pretok::GPT2, Pattern::Gpt2),
    (pretok::CL100K, Pattern::Cl100k { max_digits: 3 }),
    (pretok::QWEN2, Pattern::Cl100k { max_digits: 1 }),
    (pretok::TEKKEN, Pattern::Tekken),
];

fn oniguruma() -> &'static [SysRegex] {
    static REGEXES: std::sync::OnceLock<Vec<SysRegex>> = std::sync::OnceLock::new();
    REGEXES.get_or_init(|| {
        PATTERNS
            .iter()
            .map(|(regex, _)| SysRegex::new(regex).unwrap())
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_strings_get_the_ids_of_the_tokenizers_crate(text in mixed_text()) {
        for loaded in loaded() {
            let mut ids = Vec::new();
            loaded.ours.encode(&text, &mut ids).unwrap();
            let want = loaded.theirs.encode_fast(text.as_str(), false).unwrap();
            prop_assert_eq!(&ids, want.get_ids(), "{}", loaded.ours.info().name);
        }
    }

    #[test]
    fn the_scanners_split_as_the_regex_engine_does(text in mixed_text()) {
        for ((_, pattern), regex) in PATTERNS.iter().zip(oniguruma()) {
            let mut ours = Vec::new();
            pattern.split(&text, |piece| ours.push(piece));
            let theirs: Vec<&str> = regex.find_iter(&text).map(|(s, e)| &text[s..e]).collect();
            prop_assert_eq!(ours, theirs, "{:?}", pattern);
        }
    }
}
