//! A fast, exact encoder for byte-level BPE `tokenizer.json`s (GPT-2, cl100k / Llama-3, Qwen-2/3,
//! tekken, o200k (GPT-4o, gpt-oss), DeepSeek-V3, and others): non-special added tokens cut out first
//! ([`crate::added`]), no normalizer, NFC or NFKC, a split regex that [`crate::pretok`] scans by hand (or, for
//! any other sequence of `Split` regexes, [`GeneralSplit`] compiles; [`Splitter`]), then BPE over each
//! piece's bytes.
//!
//! NFC and NFKC are the `tokenizers` crate's own (`unicode-normalization-alignments`, Unicode 9 tables),
//! applied to each segment between added tokens as that crate does; a segment the quick check finds
//! already in normal form (nearly all text) is used as it is.
//!
//! The `tokenizers` crate maps each byte to a printable character (GPT-2's table) before BPE; here the
//! vocabulary is mapped back to bytes once, and BPE runs on byte ids directly. Pieces → ids are cached.
//!
//! [`ByteLevelBpe::from_json`] returns `None` for any `tokenizer.json` of another shape (the caller
//! then uses the `tokenizers` encoder).

use rustc_hash::FxHashMap as HashMap;

use unicode_normalization_alignments::{
    IsNormalized, UnicodeNormalization, is_nfc_quick, is_nfkc_quick,
};

use crate::added::AddedTokens;
use crate::bpe::{Cache, Merges, plain_bpe_model};
use crate::pretok::Pattern;
use crate::pretok::general::GeneralSplit;

/// The encoder (immutable, shared by threads); each thread keeps its own [`Cache`].
#[derive(Debug)]
pub struct ByteLevelBpe {
    splitter: Splitter,
    byte_ids: [u32; 256],
    merges: Merges,
    /// With `ignore_merges`: every token's bytes, looked up whole before BPE.
    whole: Option<HashMap<Box<[u8]>, u32>>,
    /// The non-special added tokens, if any.
    added: Option<AddedTokens>,
    /// The normalizer, if any.
    normalizer: Option<Form>,
}

/// A normalization form the encoder applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Nfc,
    Nfkc,
}

/// How text is cut into pieces before BPE.
#[derive(Debug)]
pub enum Splitter {
    /// By a scanner of [`crate::pretok`], for the patterns it knows by their text.
    Scanned(Pattern),
    /// By [`GeneralSplit`], for any other sequence of `Split` regexes it compiles.
    General(Box<GeneralSplit>),
}

impl Splitter {
    /// Calls `piece` with each piece of `text`, in order.
    pub fn split<'t>(&self, text: &'t str, piece: impl FnMut(&'t str)) {
        match self {
            Self::Scanned(pattern) => pattern.split(text, piece),
            Self::General(general) => general.split(text, piece),
        }
    }
}

/// GPT-2's byte → character table: printable bytes stand for themselves, the others are shifted
/// past U+0100 in byte order.
pub(crate) fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(b)] = if printable {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(0xFF + shifted).expect("below U+0200")
        };
    }
    table
}

impl ByteLevelBpe {
    /// The encoder of `json` (a parsed `tokenizer.json`) if it has the shape this module implements;
    /// `None` otherwise.
    pub fn from_json(json: &serde_json::Value) -> Option<Self> {
        let model = &json["model"];
        let normalizer = match &json["normalizer"] {
            serde_json::Value::Null => None,
            normalizer if normalizer["type"] == "NFC" => Some(Form::Nfc),
            normalizer if normalizer["type"] == "NFKC" => Some(Form::Nfkc),
            // An empty sequence (DeepSeek-V3) normalizes nothing.
            normalizer
                if normalizer["type"] == "Sequence"
                    && normalizer["normalizers"]
                        .as_array()
                        .is_some_and(Vec::is_empty) =>
            {
                None
            }
            _ => return None,
        };
        if !plain_bpe_model(model) || model.get("byte_fallback").is_some_and(|v| v != false) {
            return None;
        }
        let added = if normalizer.is_some() {
            AddedTokens::from_json(&json["added_tokens"])?
        } else {
            AddedTokens::from_json_without_normalizer(&json["added_tokens"])?
        };
        let splitter = Self::splitter_of(&json["pre_tokenizer"])?;
        let mut to_byte: HashMap<char, u8> = HashMap::default();
        for (b, c) in (0..=255u8).zip(byte_chars()) {
            to_byte.insert(c, b);
        }
        let mut vocab: HashMap<Box<[u8]>, u32> = HashMap::default();
        let mut ids: HashMap<&str, u32> = HashMap::default();
        for (token, id) in model["vocab"].as_object()? {
            let id = u32::try_from(id.as_u64()?).ok()?;
            ids.insert(token, id);
            // Tokens with characters outside the byte table can never come out of BPE over bytes.
            if let Some(bytes) = token
                .chars()
                .map(|c| to_byte.get(&c).copied())
                .collect::<Option<Box<[u8]>>>()
            {
                vocab.insert(bytes, id);
            }
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            byte_ids[usize::from(b)] = *vocab.get(&[b][..])?;
        }
        let merges = Merges::from_json(&model["merges"], |t| ids.get(t).copied())?;
        let whole = (model["ignore_merges"] == true).then_some(vocab);
        Some(Self {
            splitter,
            byte_ids,
            merges,
            whole,
            added,
            normalizer,
        })
    }

    /// Whether `json`'s pre-tokenizer is one whose split this module scans (the rest of the tokenizer
    /// may still not fit [`ByteLevelBpe::from_json`]).
    pub fn has_split_pattern(json: &serde_json::Value) -> bool {
        Self::split_pattern(&json["pre_tokenizer"]).is_some()
    }

    /// The split pattern of a `ByteLevel` pre-tokenizer with GPT-2's regex, or of a `Split` (isolated,
    /// or the same by [`isolates`]) followed by a `ByteLevel` without one; no prefix space in either.
    fn split_pattern(pre: &serde_json::Value) -> Option<Pattern> {
        // `use_regex` defaults to true when the file leaves it out (Claude's does).
        let byte_level = |p: &serde_json::Value, regex: bool| {
            p["type"] == "ByteLevel"
                && p["add_prefix_space"] == false
                && p["use_regex"].as_bool().unwrap_or(true) == regex
        };
        if byte_level(pre, true) {
            return Some(Pattern::Gpt2);
        }
        match pre["pretokenizers"].as_array()?.as_slice() {
            [split, last]
                if pre["type"] == "Sequence"
                    && split["type"] == "Split"
                    && isolates(split)
                    && byte_level(last, false) =>
            {
                Pattern::from_regex(split["pattern"]["Regex"].as_str()?)
            }
            // DeepSeek-V3: three isolated splits, each within the pieces of the one before.
            [digits, cjk, words, last] if pre["type"] == "Sequence" && byte_level(last, false) => {
                let regexes = [digits, cjk, words].map(|split| {
                    (split["type"] == "Split"
                        && split["behavior"] == "Isolated"
                        && split["invert"] == false)
                        .then(|| split["pattern"]["Regex"].as_str())
                        .flatten()
                });
                (regexes == crate::pretok::deepseek::SPLITS.map(Some)).then_some(Pattern::DeepSeek)
            }
            _ => None,
        }
    }

    /// The split of a pre-tokenizer: [`Self::split_pattern`]'s scanner where there is one, else a
    /// `Sequence` of one or more `Split`s with any regexes [`GeneralSplit`] compiles (or strings), each
    /// keeping what its behaviour keeps ([`Keep`](crate::pretok::general::Keep)), then a `ByteLevel`
    /// without a regex.
    fn splitter_of(pre: &serde_json::Value) -> Option<Splitter> {
        if let Some(pattern) = Self::split_pattern(pre) {
            return Some(Splitter::Scanned(pattern));
        }
        let [splits @ .., last] = pre["pretokenizers"].as_array()?.as_slice() else {
            return None;
        };
        if pre["type"] != "Sequence"
            || last["type"] != "ByteLevel"
            || last["add_prefix_space"] != false
            || last["use_regex"] != false
        {
            return None;
        }
        GeneralSplit::from_json(splits).map(|general| Splitter::General(Box::new(general)))
    }

    /// How text is cut into pieces.
    pub fn splitter(&self) -> &Splitter {
        &self.splitter
    }

    /// Appends the ids of `text` (no special tokens) to `out`.
    pub fn encode(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        AddedTokens::encode_around(self.added.as_ref(), text, out, |text, out| {
            self.encode_segment(text, cache, out);
        });
    }

    /// Appends the ids of `text`, a segment without added tokens.
    fn encode_segment(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        let normalized: Option<String> = match self.normalizer {
            Some(Form::Nfc) if is_nfc_quick(text.chars()) != IsNormalized::Yes => {
                Some(text.nfc().map(|(c, _)| c).collect())
            }
            Some(Form::Nfkc) if is_nfkc_quick(text.chars()) != IsNormalized::Yes => {
                Some(text.nfkc().map(|(c, _)| c).collect())
            }
            _ => None,
        };
        self.split_and_merge(normalized.as_deref().unwrap_or(text), cache, out);
    }

    fn split_and_merge(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        let mut lookup = cache.lookup(text, out, |piece, out| self.bpe(piece.as_bytes(), out));
        self.splitter.split(text, |piece| lookup.push(piece));
        lookup.finish();
    }

    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(id) = self.whole.as_ref().and_then(|whole| whole.get(piece)) {
            out.push(*id);
            return;
        }
        let symbols = piece.iter().map(|&b| self.byte_ids[usize::from(b)]);
        self.merges.merge_all(symbols, out);
    }
}

/// Whether a `Split` pre-tokenizer with one of [`Pattern`]'s regexes keeps each match as its own piece.
///
/// `Isolated` (not inverted) does by definition. `Removed` with `invert: true` (GPT-4o's file) does too,
/// for these regexes only: the `tokenizers` crate (`pre_tokenizers/split.rs`, `tokenizer/pattern.rs`)
/// lists the matches and the gaps between them, `invert` flips which is which, and `Removed` drops the
/// gaps then, keeping every match as a piece. Every regex [`Pattern`] scans matches at every character
/// (a letter starts `[Lu Lt Lm Lo M]+` or `[Ll Lm Lo M]+`, or GPT-2's and cl100k's `\p{L}+`; a number
/// `\p{N}`; whitespace `\s+`; any other character `[^\s\p{L}\p{N}]+`), so there are no gaps and
/// nothing is dropped: the pieces are `Isolated`'s. ([`Pattern::split`] relies on the same fact: its
/// pieces cover the text.) An empty text gives no piece either way.
pub fn isolates(split: &serde_json::Value) -> bool {
    match split["behavior"].as_str() {
        Some("Isolated") => split["invert"] == false,
        Some("Removed") => split["invert"] == true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_table_is_gpt2s() {
        let table = byte_chars();
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[usize::from(b'\n')], 'Ċ');
        assert_eq!(table[usize::from(b'a')], 'a');
        assert_eq!(table[0], 'Ā');
        let mut sorted = table.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }
}
