//! The cached path: any tokenizer the hand-written encoders refuse, through the `tokenizers` crate's own
//! components, with the model run once per distinct pre-token.
//!
//! [`CachedModel`] holds the crate's [`Tokenizer`] as loaded from `tokenizer.json`. A document goes
//! through the steps of the crate's `encode_fast` (`encode_single_sequence`): added tokens are cut out
//! with the crate's own [`AddedVocabulary::extract_and_normalize`](tokenizers::AddedVocabulary), which
//! normalizes the text between them; the crate's pre-tokenizer splits that text; and the model encodes
//! each pre-token on its own. The model sees nothing but the pre-token's string, so its ids are a
//! function of that string: they are kept in the thread's [`Cache`] and the model runs once per distinct
//! pre-token. What the post-processor adds is the same around every document (`special_affixes`).
//! So the ids are the crate's for every normalizer, pre-tokenizer and model it has (Unigram, WordPiece,
//! WordLevel, BPE with or without byte fallback, `ignore_merges`, `continuing_subword_prefix`), except
//! where an encoding is not a function of the pre-token, which [`CachedModel::refusal`] names: BPE with
//! dropout (random), truncation or padding (a document's ids would depend on its length).
//!
//! NFC and NFKC (alone or in a `Sequence`) are checked first with the quick check of the crate's own
//! normalization tables (`unicode-normalization-alignments`): text already in the normal form is left
//! as it is, which is what normalizing it would give.

use std::cell::RefCell;

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::{
    Model, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizer, Tokenizer,
};
use unicode_normalization_alignments::{IsNormalized, is_nfc_quick, is_nfkc_quick};

use crate::bpe::Cache;

/// A tokenizer of any shape, its model's ids cached per pre-token.
pub struct CachedModel {
    /// Built with special-token strings encoded as text.
    tokenizer: Tokenizer,
    normalizer: Option<QuickNormalizer>,
    description: String,
}

impl std::fmt::Debug for CachedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedModel")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// An owner number no encoder has: a thread's cache set to it is emptied before its next use.
const NO_ENCODER: u64 = 0;

impl CachedModel {
    /// Why caching the model's ids per pre-token could change the ids of `tokenizer`, if it could.
    pub fn refusal(tokenizer: &Tokenizer, json: &serde_json::Value) -> Option<&'static str> {
        if tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
            return Some("truncation or padding is set");
        }
        let dropout = json["model"]["dropout"].as_f64();
        if dropout.is_some_and(|p| p > 0.0) {
            return Some("BPE dropout is random");
        }
        None
    }

    /// The cached path for `tokenizer`, which must encode special-token strings as text and which
    /// [`CachedModel::refusal`] accepts.
    pub fn new(tokenizer: Tokenizer, json: &serde_json::Value) -> Self {
        let normalizer = tokenizer.get_normalizer().map(QuickNormalizer::new);
        let description = format!(
            "cached {} (normalizer {}, pre-tokenizer {})",
            kind(&json["model"]),
            kind(&json["normalizer"]),
            kind(&json["pre_tokenizer"]),
        );
        Self {
            tokenizer,
            normalizer,
            description,
        }
    }

    /// What the path is made of: the model's, normalizer's and pre-tokenizer's types.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Appends the ids of `text` (without what the post-processor adds) to `out`.
    ///
    /// # Errors
    /// Where the crate's encoder fails (a model without the unknown token it needs): then nothing the
    /// failing pre-token's encoding left in `cache` is kept.
    pub fn encode(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) -> anyhow::Result<()> {
        let mut pre = self
            .tokenizer
            .get_added_vocabulary()
            .extract_and_normalize(self.normalizer.as_ref(), text);
        if let Some(pre_tokenizer) = self.tokenizer.get_pre_tokenizer() {
            pre_tokenizer
                .pre_tokenize(&mut pre)
                .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
        }
        let splits = pre.get_splits(OffsetReferential::Normalized, OffsetType::None);
        // The pre-tokens, end to end, so that the cache reads each one as a slice of one text.
        let mut joined = String::with_capacity(text.len() + 16);
        for (piece, _, tokens) in &splits {
            if tokens.is_none() {
                joined.push_str(piece);
            }
        }
        let failure = RefCell::new(None);
        let model = self.tokenizer.get_model();
        let encode = |piece: &str, out: &mut Vec<u32>| match model.tokenize(piece) {
            Ok(tokens) => out.extend(tokens.iter().map(|t| t.id)),
            Err(e) => *failure.borrow_mut() = Some(e.to_string()),
        };
        let mut at = 0;
        let mut lookup = cache.lookup(&joined, out, &encode);
        for (piece, _, tokens) in &splits {
            match tokens {
                None => {
                    lookup.push(&joined[at..at + piece.len()]);
                    at += piece.len();
                }
                Some(tokens) => {
                    lookup.finish();
                    out.extend(tokens.iter().map(|t| t.id));
                    lookup = cache.lookup(&joined, out, &encode);
                }
            }
        }
        lookup.finish();
        if let Some(e) = failure.into_inner() {
            cache.belong_to(NO_ENCODER);
            anyhow::bail!("tokenizer failed: {e}");
        }
        Ok(())
    }
}

/// A type's name in `tokenizer.json` (`None` for null), a sequence's as its members'.
fn kind(json: &serde_json::Value) -> String {
    let members = ["normalizers", "pretokenizers"]
        .iter()
        .find_map(|key| json[key].as_array());
    match (json["type"].as_str(), members) {
        (Some("Sequence"), Some(members)) => {
            let names: Vec<String> = members.iter().map(kind).collect();
            format!("[{}]", names.join(", "))
        }
        (Some(name), _) => name.to_owned(),
        (None, _) => "None".to_owned(),
    }
}

/// A step of a normalizer, sequences flattened.
#[derive(Debug)]
enum Step {
    Nfc,
    Nfkc,
    Other(NormalizerWrapper),
}

/// The tokenizer's normalizer, but that NFC and NFKC leave text their quick check passes untouched.
#[derive(Debug)]
struct QuickNormalizer(Vec<Step>);

impl QuickNormalizer {
    fn new(normalizer: &NormalizerWrapper) -> Self {
        let mut steps = Vec::new();
        flatten(normalizer, &mut steps);
        Self(steps)
    }
}

/// A `Sequence` applies its members in order, nothing else: the same as applying them one by one.
fn flatten(normalizer: &NormalizerWrapper, steps: &mut Vec<Step>) {
    match normalizer {
        NormalizerWrapper::Sequence(sequence) => {
            for member in sequence.as_ref() {
                flatten(member, steps);
            }
        }
        NormalizerWrapper::NFC(_) => steps.push(Step::Nfc),
        NormalizerWrapper::NFKC(_) => steps.push(Step::Nfkc),
        other => steps.push(Step::Other(other.clone())),
    }
}

impl Normalizer for QuickNormalizer {
    fn normalize(&self, normalized: &mut NormalizedString) -> tokenizers::Result<()> {
        for step in &self.0 {
            match step {
                Step::Nfc => {
                    if is_nfc_quick(normalized.get().chars()) != IsNormalized::Yes {
                        normalized.nfc();
                    }
                }
                Step::Nfkc => {
                    if is_nfkc_quick(normalized.get().chars()) != IsNormalized::Yes {
                        normalized.nfkc();
                    }
                }
                Step::Other(normalizer) => normalizer.normalize(normalized)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// The quick check passes only what normalizing leaves as it is.
    #[test]
    fn quick_normalizer_equals_the_normalizer() {
        let texts = [
            "plain ascii",
            "caf\u{e9}",
            "cafe\u{301}",
            "\u{fb01}ne \u{2460} \u{ff21}",
            "\u{1100}\u{1161}\u{11a8}",
            "\u{212b}\u{2126}",
            "\u{0958}\u{0915}\u{093c}",
            "",
        ];
        let normalizers = [
            r#"{"type": "NFC"}"#,
            r#"{"type": "NFKC"}"#,
            r#"{"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Sequence", "normalizers": [{"type": "NFC"}]}]}"#,
        ];
        for json in normalizers {
            let normalizer: NormalizerWrapper = serde_json::from_str(json).unwrap();
            let quick = QuickNormalizer::new(&normalizer);
            for text in texts {
                let (mut want, mut got) =
                    (NormalizedString::from(text), NormalizedString::from(text));
                normalizer.normalize(&mut want).unwrap();
                quick.normalize(&mut got).unwrap();
                assert_eq!(got.get(), want.get(), "{json} on {text:?}");
            }
        }
    }

    #[test]
    fn kinds_name_sequences_by_their_members() {
        let json = serde_json::json!({"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Metaspace"}]});
        assert_eq!(kind(&json), "[WhitespaceSplit, Metaspace]");
        assert_eq!(kind(&serde_json::Value::Null), "None");
    }
}
