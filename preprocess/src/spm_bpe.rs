//! A fast, exact encoder for SentencePiece-style BPE `tokenizer.json`s: a BPE model with byte fallback,
//! the normalizer `Prepend("▁")` + `Replace(" ", "▁")` (Mistral-7B, Llama-2, Phi-3) or `Replace(" ", "▁")`
//! alone (Gemma-3), no pre-tokenizer or one that cannot cut the normalized text, and non-special added
//! tokens cut out first ([`crate::added`]: Phi-3's `</s>` with `rstrip`, Gemma-3's 6,406).
//!
//! As the `tokenizers` crate does, each segment of text between added tokens is normalized on its own: a
//! `Prepend("▁")` applies again to the text after an added token (`x</s>\nabc` is `▁x`, `</s>\n`, `▁abc`).
//! Gemma-3's pre-tokenizer, `Split(String " ", MergedWithPrevious)`, splits at U+0020; it sees the
//! normalized text, where `Replace` has made every U+0020 a `▁`, so it finds nothing and (with
//! `invert: false`, whatever the behaviour) leaves each segment whole. Added tokens are matched before the
//! normalizer (`normalized: false`), so Gemma-3's `▁▁` runs match a literal `▁▁` in the text but not two
//! spaces (those become `▁▁` only after; BPE then finds the same pieces anyway).
//!
//! The `tokenizers` crate runs BPE over a whole segment as one word. Here the normalized text is cut
//! where no merge can ever join: between two characters that appear next to each other in no token of
//! the vocabulary (a merge across that point would make a token containing them). Merges never cross a
//! cut, and merges on either side never touch the same symbols, so BPE over each piece, in rank order,
//! gives exactly the ids of BPE over the whole. Pieces are mostly words; their ids are cached.
//!
//! [`SentencePieceBpe::from_json`] returns `None` for any `tokenizer.json` of another shape (the caller
//! then uses the `tokenizers` encoder).

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::added::{AddedTokens, Segment, ids_as_loaded};
pub use crate::bpe::Cache;
use crate::bpe::{Merges, plain_bpe_model};

/// The encoder (immutable, shared by threads); each thread keeps its own [`Cache`].
#[derive(Debug)]
pub struct SentencePieceBpe {
    char_ids: HashMap<char, u32>,
    merges: Merges,
    byte_ids: Vec<u32>,
    /// Adjacent characters found together in some token: the only places a merge can join.
    joinable: HashSet<(char, char)>,
    /// The same for pairs of ASCII characters and `▁` (most of any text), as a bit matrix.
    joinable_small: Box<[u64]>,
    /// Whether the normalizer prepends `▁` to each segment (not Gemma-3's).
    prepends: bool,
    /// The non-special added tokens, if any.
    added: Option<AddedTokens>,
}

const SPACE: char = '\u{2581}';

/// Characters with a place in the bit matrix of joinable pairs: ASCII, then `▁`.
const SMALL: usize = 129;

#[inline]
fn small(c: char) -> Option<usize> {
    match c {
        '\0'..='\x7f' => Some(c as usize),
        SPACE => Some(128),
        _ => None,
    }
}

fn joinable_small(joinable: &HashSet<(char, char)>) -> Box<[u64]> {
    let mut bits = vec![0u64; (SMALL * SMALL).div_ceil(64)].into_boxed_slice();
    for &(a, b) in joinable {
        if let (Some(a), Some(b)) = (small(a), small(b)) {
            let bit = a * SMALL + b;
            bits[bit / 64] |= 1 << (bit % 64);
        }
    }
    bits
}

impl SentencePieceBpe {
    /// The encoder of `json` (a parsed `tokenizer.json`) if it has the shape this module implements;
    /// `None` otherwise.
    pub fn from_json(json: &serde_json::Value) -> Option<Self> {
        let model = &json["model"];
        if !plain_bpe_model(model)
            || model["byte_fallback"] != true
            || model.get("ignore_merges").is_some_and(|v| v != false)
            || !Self::keeps_segments_whole(&json["pre_tokenizer"])
        {
            return None;
        }
        let prepends = Self::prepends(&json["normalizer"])?;
        let vocab: HashMap<&str, u32> = model["vocab"]
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.as_str(), u32::try_from(v.as_u64()?).ok()?)))
            .collect::<Option<_>>()?;
        let mut char_ids = HashMap::default();
        let mut joinable = HashSet::default();
        for (token, &id) in &vocab {
            let mut chars = token.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                char_ids.insert(c, id);
            }
            let chars: Vec<char> = token.chars().collect();
            for pair in chars.windows(2) {
                joinable.insert((pair[0], pair[1]));
            }
        }
        // With every byte token present, no character is ever unknown (as `tokenizers` then falls back).
        let byte_ids: Vec<u32> = (0..=255u8)
            .map(|b| vocab.get(format!("<0x{b:02X}>").as_str()).copied())
            .collect::<Option<_>>()?;
        let byte_set: HashSet<u32> = byte_ids.iter().copied().collect();
        let merges = Merges::from_json(&model["merges"], |t| vocab.get(t).copied())?;
        // A merge of byte-fallback symbols would join across a cut: not this module's.
        if merges
            .pairs()
            .any(|(a, b)| byte_set.contains(&a) || byte_set.contains(&b))
        {
            return None;
        }
        let added = AddedTokens::from_json(&json["added_tokens"])?;
        if !ids_as_loaded(&json["added_tokens"], vocab.len(), |t| {
            vocab.get(t).copied()
        }) {
            return None;
        }
        Some(Self {
            char_ids,
            merges,
            byte_ids,
            joinable_small: joinable_small(&joinable),
            joinable,
            prepends,
            added,
        })
    }

    /// Whether `normalizer` is `Prepend("▁")` + `Replace(" ", "▁")` (`Some(true)`) or `Replace(" ", "▁")`
    /// alone (`Some(false)`).
    fn prepends(normalizer: &serde_json::Value) -> Option<bool> {
        let replace = serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        let prepend = serde_json::json!({"type": "Prepend", "prepend": "\u{2581}"});
        if *normalizer == replace {
            return Some(false);
        }
        match normalizer["normalizers"].as_array().map(Vec::as_slice) {
            Some([first, second])
                if normalizer["type"] == "Sequence" && *first == prepend && *second == replace =>
            {
                Some(true)
            }
            _ => None,
        }
    }

    /// Whether `pre_tokenizer` is none, or a split at U+0020 (not inverted), which never cuts text the
    /// normalizer has replaced every U+0020 of.
    fn keeps_segments_whole(pre_tokenizer: &serde_json::Value) -> bool {
        pre_tokenizer.is_null()
            || pre_tokenizer["type"] == "Split"
                && pre_tokenizer["pattern"] == serde_json::json!({"String": " "})
                && pre_tokenizer["invert"] == false
                && [
                    "Removed",
                    "Isolated",
                    "MergedWithPrevious",
                    "MergedWithNext",
                    "Contiguous",
                ]
                .iter()
                .any(|b| pre_tokenizer["behavior"] == *b)
    }

    /// Appends the ids of `text` (no special tokens) to `out`.
    pub fn encode(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        let mut normalized = String::new();
        AddedTokens::encode_around(self.added.as_ref(), text, out, |text, out| {
            self.encode_segment(text, &mut normalized, cache, out);
        });
    }

    /// Appends the ids of `text`, a segment without added tokens; `normalized` is scratch space.
    fn encode_segment(
        &self,
        text: &str,
        normalized: &mut String,
        cache: &mut Cache,
        out: &mut Vec<u32>,
    ) {
        self.normalize(text, normalized);
        let mut lookup = cache.lookup(normalized, out, |piece, out| self.bpe(piece, out));
        self.cut(normalized, |piece| lookup.push(piece));
        lookup.finish();
    }

    /// Calls `piece` with each piece of the normalized `text`, in order (an added token is not a piece).
    pub fn split(&self, text: &str, mut piece: impl FnMut(&str)) {
        let mut normalized = String::new();
        let mut segment = |text: &str| {
            self.normalize(text, &mut normalized);
            self.cut(&normalized, &mut piece);
        };
        match &self.added {
            None => segment(text),
            Some(added) => added.split(text, |s| {
                if let Segment::Text(text) = s {
                    segment(text);
                }
            }),
        }
    }

    /// Into `normalized`: `▁` before the text (if the normalizer prepends it) and for every space;
    /// nothing for an empty text.
    fn normalize(&self, text: &str, normalized: &mut String) {
        normalized.clear();
        if text.is_empty() {
            return;
        }
        normalized.reserve(text.len() + text.len() / 4 + 3);
        if self.prepends {
            normalized.push(SPACE);
        }
        let mut start = 0;
        for (at, &b) in text.as_bytes().iter().enumerate() {
            if b == b' ' {
                normalized.push_str(&text[start..at]);
                normalized.push(SPACE);
                start = at + 1;
            }
        }
        normalized.push_str(&text[start..]);
    }

    #[inline]
    fn joinable(&self, a: char, b: char) -> bool {
        match (small(a), small(b)) {
            (Some(a), Some(b)) => {
                let bit = a * SMALL + b;
                self.joinable_small[bit / 64] >> (bit % 64) & 1 != 0
            }
            _ => self.joinable.contains(&(a, b)),
        }
    }

    /// Calls `piece` with each piece of `normalized`: cut between characters no token holds side by
    /// side.
    fn cut<'s>(&self, normalized: &'s str, mut piece: impl FnMut(&'s str)) {
        if normalized.is_empty() {
            return;
        }
        let mut start = 0;
        let mut previous: Option<char> = None;
        for (at, c) in normalized.char_indices() {
            if let Some(p) = previous
                && !self.joinable(p, c)
            {
                piece(&normalized[start..at]);
                start = at;
            }
            previous = Some(c);
        }
        piece(&normalized[start..]);
    }

    /// BPE over one piece: its characters, or their UTF-8 bytes' fallback tokens, merged.
    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = Vec::with_capacity(piece.len());
        for c in piece.chars() {
            if let Some(&id) = self.char_ids.get(&c) {
                symbols.push(id);
            } else {
                let mut utf8 = [0u8; 4];
                let bytes = c.encode_utf8(&mut utf8).as_bytes();
                symbols.extend(bytes.iter().map(|&b| self.byte_ids[usize::from(b)]));
            }
        }
        self.merges.merge_all(symbols.into_iter(), out);
    }
}
