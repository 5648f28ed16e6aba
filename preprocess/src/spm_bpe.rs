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

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// The merge of a pair: its rank (position in `merges`) and the id of the merged token.
type Merge = (u32, u32);

/// The encoder (immutable, shared by threads); each thread keeps its own [`Cache`].
#[derive(Debug)]
pub struct SentencePieceBpe {
    char_ids: HashMap<char, u32>,
    merges: HashMap<(u32, u32), Merge>,
    byte_ids: Vec<Option<u32>>,
    unk: Option<u32>,
    fuse_unk: bool,
    /// Adjacent characters found together in some token: the only places a merge can join.
    joinable: HashSet<(char, char)>,
}

/// Piece → ids, per thread, bounded.
#[derive(Debug, Default)]
pub struct Cache {
    map: HashMap<Box<str>, Box<[u32]>>,
}

/// Pieces longer than this (bytes) are not cached.
const CACHED_PIECE_BYTES: usize = 64;
/// Entries kept per cache; it is emptied when full.
const CACHE_ENTRIES: usize = 1 << 18;

const SPACE: char = '\u{2581}';

impl SentencePieceBpe {
    /// The encoder of `json` (a parsed `tokenizer.json`) if it has the shape this module implements;
    /// `None` otherwise.
    pub fn from_json(json: &serde_json::Value) -> Option<Self> {
        let model = &json["model"];
        let plain = |key: &str| model.get(key).is_none_or(serde_json::Value::is_null);
        if model["type"] != "BPE"
            || model["byte_fallback"] != true
            || model.get("ignore_merges").is_some_and(|v| v != false)
            || !plain("dropout")
            || !plain("continuing_subword_prefix")
            || !plain("end_of_word_suffix")
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
        // Added tokens must all be special (the caller encodes them as text, as flame-prep does).
        if json["added_tokens"]
            .as_array()
            .is_some_and(|added| added.iter().any(|t| t["special"] != true))
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
        let byte_ids: Vec<Option<u32>> = (0..=255u8)
            .map(|b| vocab.get(format!("<0x{b:02X}>").as_str()).copied())
            .collect();
        // With every byte token present, no character is ever unknown (as `tokenizers` then falls back).
        if byte_ids.iter().any(Option::is_none) {
            return None;
        }
        let byte_set: HashSet<u32> = byte_ids.iter().flatten().copied().collect();
        let unk = match &model["unk_token"] {
            serde_json::Value::String(s) => Some(*vocab.get(s.as_str())?),
            _ => None,
        };
        let mut merges = HashMap::default();
        for (rank, merge) in model["merges"].as_array()?.iter().enumerate() {
            let (a, b) = match merge {
                serde_json::Value::String(s) => s.split_once(' ')?,
                serde_json::Value::Array(pair) => (pair.first()?.as_str()?, pair.get(1)?.as_str()?),
                _ => return None,
            };
            let (ia, ib) = (*vocab.get(a)?, *vocab.get(b)?);
            let merged = *vocab.get(format!("{a}{b}").as_str())?;
            // A merge of byte-fallback or unknown symbols would join across a cut: not this module's.
            if [ia, ib]
                .iter()
                .any(|i| byte_set.contains(i) || Some(*i) == unk)
            {
                return None;
            }
            merges
                .entry((ia, ib))
                .or_insert((u32::try_from(rank).ok()?, merged));
        }
        Some(Self {
            char_ids,
            merges,
            byte_ids,
            unk,
            fuse_unk: model["fuse_unk"] == true,
            joinable,
        })
    }

    /// Appends the ids of `text` (no special tokens) to `out`.
    pub fn encode(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut normalized = String::with_capacity(text.len() + 3);
        normalized.push(SPACE);
        for c in text.chars() {
            normalized.push(if c == ' ' { SPACE } else { c });
        }
        let mut start = 0;
        let mut previous: Option<char> = None;
        for (at, c) in normalized.char_indices() {
            if let Some(p) = previous
                && !self.joinable.contains(&(p, c))
            {
                self.piece(&normalized[start..at], cache, out);
                start = at;
            }
            previous = Some(c);
        }
        self.piece(&normalized[start..], cache, out);
    }

    fn piece(&self, piece: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        if piece.len() <= CACHED_PIECE_BYTES {
            if let Some(ids) = cache.map.get(piece) {
                out.extend_from_slice(ids);
                return;
            }
            let from = out.len();
            self.bpe(piece, out);
            if cache.map.len() >= CACHE_ENTRIES {
                cache.map.clear();
            }
            cache.map.insert(piece.into(), out[from..].into());
        } else {
            self.bpe(piece, out);
        }
    }

    /// BPE over one piece, as `tokenizers`' `Word::merge_all`: the valid pair of lowest rank, leftmost
    /// first, until none is left.
    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = Vec::with_capacity(piece.len());
        let mut unknown: Option<()> = None;
        for c in piece.chars() {
            if let Some(&id) = self.char_ids.get(&c) {
                unknown = None;
                symbols.push(id);
                continue;
            }
            let mut utf8 = [0u8; 4];
            let bytes = c.encode_utf8(&mut utf8).as_bytes();
            if let Some(ids) = bytes
                .iter()
                .map(|&b| self.byte_ids[usize::from(b)])
                .collect::<Option<Vec<u32>>>()
            {
                unknown = None;
                symbols.extend(ids);
            } else if let Some(unk) = self.unk {
                if !(self.fuse_unk && unknown.is_some()) {
                    symbols.push(unk);
                }
                unknown = Some(());
            }
        }
        if symbols.len() < 2 {
            out.extend_from_slice(&symbols);
            return;
        }
        let n = symbols.len();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(&(rank, merged)) = self.merges.get(&(symbols[i], symbols[i + 1])) {
                heap.push(Reverse((rank, i, merged)));
            }
        }
        while let Some(Reverse((rank, i, merged))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j >= n {
                continue;
            }
            // A stale entry: the pair at `i` is no longer the one this merge was for.
            if self.merges.get(&(symbols[i], symbols[j])) != Some(&(rank, merged)) {
                continue;
            }
            symbols[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
            }
            if let Some(&p) = prev.get(i).filter(|&&p| p < n)
                && let Some(&(r, m)) = self.merges.get(&(symbols[p], symbols[i]))
            {
                heap.push(Reverse((r, p, m)));
            }
            if next[i] < n
                && let Some(&(r, m)) = self.merges.get(&(symbols[i], symbols[next[i]]))
            {
                heap.push(Reverse((r, i, m)));
            }
        }
        out.extend((0..n).filter(|&i| alive[i]).map(|i| symbols[i]));
    }
}
