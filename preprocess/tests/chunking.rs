//! Cutting long documents at hard boundaries (`flame_preprocess::chunk`) never changes an id: for all four
//! reference tokenizers, every corpus document and random texts built from the characters that decide
//! pre-token boundaries give the same ids cut into small pieces as encoded whole.

use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use proptest::prelude::*;

use crate::exactness::{TOKENIZERS, corpus_texts, tokenizer_path};

fn encoders(chunk_bytes: usize) -> Vec<(&'static str, TextEncoder, TextEncoder)> {
    TOKENIZERS
        .iter()
        .map(|&name| {
            let path = tokenizer_path(name);
            let whole = TextEncoder::load(&path, BosPolicy::Tokenizer, false, false).unwrap();
            assert!(
                whole.cuts_long_documents(),
                "{name} is a tokenizer that is cut"
            );
            let cut = TextEncoder::load_with_chunk_bytes(&path, BosPolicy::Tokenizer, chunk_bytes)
                .unwrap();
            (name, whole, cut)
        })
        .collect()
}

/// Corpus documents with line breaks, from every file of the corpus, up to this many bytes in all (the
/// whole corpus takes minutes to encode twice with four tokenizers on two cores).
const CORPUS_BYTES: usize = 3 << 20;

#[test]
fn corpus_documents_cut_into_small_pieces_keep_their_ids() {
    let texts = corpus_texts();
    let stride = texts.len() / 400;
    let mut chosen: Vec<&String> = texts
        .iter()
        .step_by(stride.max(1))
        .filter(|t| t.contains('\n'))
        .collect();
    let mut total = 0;
    chosen.retain(|t| {
        total += t.len();
        total <= CORPUS_BYTES
    });
    assert!(chosen.len() > 100, "{} documents", chosen.len());
    let (mut whole_ids, mut cut_ids) = (Vec::new(), Vec::new());
    for (name, whole, cut) in &encoders(64) {
        for (i, text) in chosen.iter().enumerate() {
            whole.encode(text, &mut whole_ids).unwrap();
            cut.encode(text, &mut cut_ids).unwrap();
            assert_eq!(cut_ids, whole_ids, "{name}: chosen corpus document {i}");
        }
    }
}

/// Characters chosen to sit on every side of the boundary rule: letters, digits, newlines, spaces, tabs,
/// carriage returns, punctuation, slashes, apostrophes, non-ASCII letters and marks.
fn tricky_text() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "a",
        "Z",
        "The",
        "'s",
        "'ll",
        "7",
        "123",
        "\n",
        "\n\n",
        " ",
        "  ",
        "\t",
        "\r\n",
        "\r",
        ".",
        "/",
        "//",
        "!?",
        "é",
        "Ünïcødé",
        "\u{301}",
        "日本",
        "\u{3000}",
        "<s>",
        "</s>",
        "<|endoftext|>",
        "▁",
    ]);
    prop::collection::vec(pieces, 0..80).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn random_texts_cut_into_tiny_pieces_keep_their_ids(text in tricky_text()) {
        thread_local! {
            static ENCODERS: Vec<(&'static str, TextEncoder, TextEncoder)> = encoders(1);
        }
        ENCODERS.with(|encoders| {
            let (mut whole_ids, mut cut_ids) = (Vec::new(), Vec::new());
            for (name, whole, cut) in encoders {
                whole.encode(&text, &mut whole_ids).unwrap();
                cut.encode(&text, &mut cut_ids).unwrap();
                prop_assert_eq!(&cut_ids, &whole_ids, "{} on {:?}", name, text);
            }
            Ok(())
        })?;
    }
}
