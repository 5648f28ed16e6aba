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
//! Where every normalizer and pre-tokenizer step is one [`native`] has (NFC, NFKC, `Lowercase`,
//! `Strip`, a string `Replace`, `Prepend`, `Precompiled`; `Metaspace`, `Whitespace`,
//! `WhitespaceSplit`, `Digits`, `Punctuation`; sequences of them) and [`AddedTokens`] takes the added
//! tokens, those replace the crate's `extract_and_normalize` and pre-tokenizer, whose
//! `NormalizedString`s keep alignments this path never reads: [`CachedModel::pre_tokens`] are the same
//! strings, checked against the crate's. Any other step keeps the crate's components for the whole
//! tokenizer.
//!
//! On the crate's components, NFC and NFKC (alone or in a `Sequence`) are checked first with the quick
//! check of the crate's own normalization tables (`unicode-normalization-alignments`): text already in
//! the normal form is left as it is, which is what normalizing it would give.

use std::cell::RefCell;

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::{
    Model, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizer, Tokenizer,
};
use unicode_normalization_alignments::{IsNormalized, is_nfc_quick, is_nfkc_quick};

use crate::added::{AddedTokens, Segment};
use crate::bpe::Cache;
use native::{Native, Scratch};

pub mod native;

/// A tokenizer of any shape, its model's ids cached per pre-token.
pub struct CachedModel {
    /// Built with special-token strings encoded as text.
    tokenizer: Tokenizer,
    normalizer: Option<QuickNormalizer>,
    /// The native normalizer and pre-tokenizer, and the added tokens they go between, where they cover
    /// the tokenizer.
    native: Option<(Native, Option<AddedTokens>)>,
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
        let native = Native::new(tokenizer.get_normalizer(), tokenizer.get_pre_tokenizer())
            .zip(AddedTokens::from_json(&json["added_tokens"]));
        let description = format!(
            "cached {} (normalizer {}, pre-tokenizer {}{})",
            kind(&json["model"]),
            kind(&json["normalizer"]),
            kind(&json["pre_tokenizer"]),
            if native.is_some() { ", native" } else { "" },
        );
        Self {
            tokenizer,
            normalizer,
            native,
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
        let mut pre = PreTokens::default();
        self.pre_tokenize(text, &mut pre)?;
        let failure = RefCell::new(None);
        let model = self.tokenizer.get_model();
        let encode = |piece: &str, out: &mut Vec<u32>| match model.tokenize(piece) {
            Ok(tokens) => out.extend(tokens.iter().map(|t| t.id)),
            Err(e) => *failure.borrow_mut() = Some(e.to_string()),
        };
        let mut at = 0;
        let mut lookup = cache.lookup(&pre.joined, out, &encode);
        for mark in &pre.marks {
            match *mark {
                Mark::Piece(len) => {
                    lookup.push(&pre.joined[at..at + len]);
                    at += len;
                }
                Mark::Added(id) => {
                    lookup.finish();
                    out.push(id);
                    lookup = cache.lookup(&pre.joined, out, &encode);
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

    /// What the model is given for `text`, in order: each pre-token's string, or an added token's id
    /// (`None` and `Some`, as the crate's splits have no tokens or one).
    ///
    /// # Errors
    /// Where the crate's pre-tokenizer fails.
    pub fn pre_tokens(&self, text: &str) -> anyhow::Result<Vec<(String, Option<u32>)>> {
        let mut pre = PreTokens::default();
        self.pre_tokenize(text, &mut pre)?;
        let mut at = 0;
        let pieces = pre.marks.iter().map(|mark| match *mark {
            Mark::Piece(len) => {
                at += len;
                (pre.joined[at - len..at].to_owned(), None)
            }
            Mark::Added(id) => (String::new(), Some(id)),
        });
        Ok(pieces.collect())
    }

    /// Whether the normalizer and pre-tokenizer are this module's own ([`native`]), not the crate's.
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// `text`'s pre-tokens and added tokens into `pre`: natively where [`Native`] covers the tokenizer.
    fn pre_tokenize(&self, text: &str, pre: &mut PreTokens) -> anyhow::Result<()> {
        pre.joined.reserve(text.len() + text.len() / 4);
        let Some((native, added)) = &self.native else {
            return self.crate_pre_tokenize(text, pre);
        };
        let mut scratch = Scratch::default();
        let mut section = |section: &str, pre: &mut PreTokens| {
            let at_start = std::ptr::eq(section.as_ptr(), text.as_ptr());
            native.pre_tokenize(section, at_start, &mut scratch, |piece| {
                pre.joined.push_str(piece);
                pre.marks.push(Mark::Piece(piece.len()));
            });
        };
        match added {
            None if text.is_empty() => {}
            None => section(text, pre),
            Some(added) => added.split(text, |segment| match segment {
                Segment::Text(text) => section(text, pre),
                Segment::Token(id) => pre.marks.push(Mark::Added(id)),
            }),
        }
        Ok(())
    }

    /// [`CachedModel::pre_tokenize`] through the crate's added-token split, normalizer and pre-tokenizer.
    fn crate_pre_tokenize(&self, text: &str, pre: &mut PreTokens) -> anyhow::Result<()> {
        let mut split = self
            .tokenizer
            .get_added_vocabulary()
            .extract_and_normalize(self.normalizer.as_ref(), text);
        if let Some(pre_tokenizer) = self.tokenizer.get_pre_tokenizer() {
            pre_tokenizer
                .pre_tokenize(&mut split)
                .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
        }
        for (piece, _, tokens) in split.get_splits(OffsetReferential::Normalized, OffsetType::None)
        {
            match tokens {
                None => {
                    pre.joined.push_str(piece);
                    pre.marks.push(Mark::Piece(piece.len()));
                }
                Some(tokens) => pre.marks.extend(tokens.iter().map(|t| Mark::Added(t.id))),
            }
        }
        Ok(())
    }
}

/// A document's pre-tokens end to end (so that the cache reads each one as a slice of one text), and
/// where each ends or an added token stands.
#[derive(Debug, Default)]
struct PreTokens {
    joined: String,
    marks: Vec<Mark>,
}

/// A pre-token (its length in bytes in [`PreTokens::joined`]) or an added token's id.
#[derive(Clone, Copy, Debug)]
enum Mark {
    Piece(usize),
    Added(u32),
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
