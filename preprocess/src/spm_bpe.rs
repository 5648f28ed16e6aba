//! A fast, exact encoder for SentencePiece-style BPE `tokenizer.json`s (Mistral-7B, Llama-2: a BPE model
//! with byte fallback, the normalizer `Prepend("▁")` + `Replace(" ", "▁")`, no pre-tokenizer).
//!
//! The `tokenizers` crate runs BPE over a whole document as one word. Here the normalized text is cut
//! where no merge can ever join: between two characters that appear next to each other in no token of
//! the vocabulary (a merge across that point would make a token containing them). Merges never cross a
//! cut, and merges on either side never touch the same symbols, so BPE over each piece, in rank order,
//! gives exactly the ids of BPE over the whole. Pieces are mostly words; their ids are cached.
//!
//! [`SentencePieceBpe::from_json`] returns `None` for any `tokenizer.json` of another shape (the caller
//! then uses the `tokenizers` encoder).

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

pub use crate::bpe::Cache;
use crate::bpe::{Merges, plain_bpe};

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
        if !plain_bpe(json)
            || model["byte_fallback"] != true
            || model.get("ignore_merges").is_some_and(|v| v != false)
            || !json["pre_tokenizer"].is_null()
        {
            return None;
        }
        let normalizers = json["normalizer"]["normalizers"].as_array()?;
        let expected = serde_json::json!([
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}
        ]);
        if json["normalizer"]["type"] != "Sequence"
            || serde_json::Value::Array(normalizers.clone()) != expected
        {
            return None;
        }
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
        Some(Self {
            char_ids,
            merges,
            byte_ids,
            joinable_small: joinable_small(&joinable),
            joinable,
        })
    }

    /// Appends the ids of `text` (no special tokens) to `out`.
    pub fn encode(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        let normalized = Self::normalize(text);
        let mut lookup = cache.lookup(&normalized, out, |piece, out| self.bpe(piece, out));
        self.cut(&normalized, |piece| lookup.push(piece));
        lookup.finish();
    }

    /// Calls `piece` with each piece of the normalized `text`, in order.
    pub fn split(&self, text: &str, piece: impl FnMut(&str)) {
        self.cut(&Self::normalize(text), piece);
    }

    /// `▁` before the text and for every space (nothing for an empty text).
    fn normalize(text: &str) -> String {
        if text.is_empty() {
            return String::new();
        }
        let mut normalized = String::with_capacity(text.len() + text.len() / 4 + 3);
        normalized.push(SPACE);
        let mut start = 0;
        for (at, &b) in text.as_bytes().iter().enumerate() {
            if b == b' ' {
                normalized.push_str(&text[start..at]);
                normalized.push(SPACE);
                start = at + 1;
            }
        }
        normalized.push_str(&text[start..]);
        normalized
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
