//! The fast SentencePiece-BPE encoder (`flame_preprocess::spm_bpe`) against the `tokenizers` crate and the
//! reference implementation's golden ids: every golden text, every document of the jsonl corpus, and
//! random strings of mixed scripts, whitespace runs, digits, emoji and characters outside the vocabulary.

use flame_preprocess::spm_bpe::{Cache, SentencePieceBpe};
use proptest::prelude::*;

use crate::exactness::{TOKENIZERS, tokenizer_path};
use crate::util::shared;

fn load(name: &str) -> (Option<SentencePieceBpe>, tokenizers::Tokenizer) {
    let path = tokenizer_path(name);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut reference = tokenizers::Tokenizer::from_file(&path).unwrap();
    reference.set_encode_special_tokens(true);
    (SentencePieceBpe::from_json(&json), reference)
}

fn ours(encoder: &SentencePieceBpe, cache: &mut Cache, text: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    encoder.encode(text, cache, &mut ids);
    ids
}

fn theirs(reference: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    reference
        .encode_fast(text, false)
        .unwrap()
        .get_ids()
        .to_vec()
}

#[test]
fn only_sentencepiece_style_tokenizers_take_the_fast_path() {
    for name in TOKENIZERS {
        assert_eq!(load(name).0.is_some(), name == "mistral-7b-v0.1", "{name}");
    }
}

#[test]
fn golden_texts_and_every_corpus_document_get_the_reference_ids() {
    let (encoder, reference) = load("mistral-7b-v0.1");
    let encoder = encoder.unwrap();
    let mut cache = Cache::default();
    let data = shared().join("data");
    let texts = std::fs::read_to_string(data.join("golden/texts.jsonl")).unwrap();
    let golden = std::fs::read_to_string(data.join("golden/mistral-7b-v0.1.ids.jsonl")).unwrap();
    for (text, want) in texts.lines().zip(golden.lines()) {
        let text: serde_json::Value = serde_json::from_str(text).unwrap();
        let want: serde_json::Value = serde_json::from_str(want).unwrap();
        let want: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
        assert_eq!(
            ours(&encoder, &mut cache, text["text"].as_str().unwrap()),
            want,
            "{}",
            text["id"]
        );
    }
    let mut documents = 0;
    for file in [
        "en-moby-dick",
        "en-jargon-devil",
        "multi-udhr",
        "code-go-std-1mb",
    ] {
        let lines =
            std::fs::read_to_string(data.join(format!("corpus/jsonl/{file}.jsonl"))).unwrap();
        for line in lines.lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = row["text"].as_str().unwrap();
            assert!(
                ours(&encoder, &mut cache, text) == theirs(&reference, text),
                "{file}: {}",
                row["title"]
            );
            documents += 1;
        }
    }
    assert_eq!(documents, 754);
}

fn mixed_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        "[a-zA-Z]{1,12}",
        "[0-9]{1,6}",
        "[ ]{1,5}",
        "[\t\n\r]{1,3}",
        "[\u{4e00}-\u{4e60}]{1,6}",
        "[\u{0600}-\u{0620}\u{0900}-\u{0930}]{1,5}",
        "[\u{1F600}-\u{1F64F}]{1,3}",
        "[\u{0300}-\u{0310}]{1,2}",
        "[\u{2581}\u{00a0}\u{3000}]{1,3}",
        "[\u{10000}-\u{10100}\u{e000}-\u{e010}]{1,2}",
        "[.,;:!?'\"()<>/\\\\-]{1,4}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_strings_get_the_ids_of_the_tokenizers_crate(text in mixed_text()) {
        let (encoder, reference) = load_cached();
        let mut cache = Cache::default();
        prop_assert_eq!(ours(encoder, &mut cache, &text), theirs(reference, &text));
    }
}

fn load_cached() -> &'static (SentencePieceBpe, tokenizers::Tokenizer) {
    static LOADED: std::sync::OnceLock<(SentencePieceBpe, tokenizers::Tokenizer)> =
        std::sync::OnceLock::new();
    LOADED.get_or_init(|| {
        let (encoder, reference) = load("mistral-7b-v0.1");
        (encoder.unwrap(), reference)
    })
}
