//! Non-special added tokens, matched in document text before anything else, as the `tokenizers` crate's
//! `AddedVocabulary` does even when special tokens are encoded as text.
//!
//! The `tokenizers` crate finds every added token (special or not) with one leftmost-longest automaton
//! over the raw text; with `encode_special_tokens` a special token's match is then dropped, its text left
//! to the segment around it, and the search goes on *after* it (so it hides any token overlapping it). A
//! non-special match cuts the text: it becomes its own id, and each segment between matches is normalized
//! and pre-tokenized on its own. [`AddedTokens`] does the same search; it takes only non-special tokens
//! with `normalized`, `single_word`, `lstrip` and `rstrip` all false (matched in the raw text, nothing
//! stripped), and [`AddedTokens::from_json`] refuses a tokenizer with any other.

use rustc_hash::FxHashMap as HashMap;

/// The added tokens of a `tokenizer.json`, grouped by first byte, longest first.
#[derive(Debug)]
pub struct AddedTokens {
    by_first_byte: HashMap<u8, Vec<Candidate>>,
}

/// An added token's content and id (`None` for a special token, which is matched only to be skipped).
type Candidate = (Box<[u8]>, Option<u32>);

/// A stretch of document text: plain text, or a non-special added token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'t> {
    /// Text to normalize, pre-tokenize and encode.
    Text(&'t str),
    /// An added token's id.
    Token(u32),
}

impl AddedTokens {
    /// The non-special added tokens of `added_tokens` (`tokenizer.json`'s list), or `Some(None)` if there
    /// are none; `None` if one has a flag this module does not implement.
    pub fn from_json(added_tokens: &serde_json::Value) -> Option<Option<Self>> {
        let Some(tokens) = added_tokens.as_array() else {
            return Some(None);
        };
        if tokens.iter().all(|t| t["special"] == true) {
            return Some(None);
        }
        let mut by_first_byte: HashMap<u8, Vec<Candidate>> = HashMap::default();
        for token in tokens {
            let content = token["content"].as_str()?;
            let special = token["special"] == true;
            if special {
                // Dropped before its flags are looked at; a `normalized` one is searched for in the
                // normalized text, where no non-special token taken here is.
                if token["normalized"] != false {
                    continue;
                }
            } else if ["single_word", "lstrip", "rstrip", "normalized"]
                .iter()
                .any(|flag| token[*flag] != false)
            {
                return None;
            }
            let id = u32::try_from(token["id"].as_u64()?).ok()?;
            let first = *content.as_bytes().first()?;
            by_first_byte
                .entry(first)
                .or_default()
                .push((content.as_bytes().into(), (!special).then_some(id)));
        }
        for candidates in by_first_byte.values_mut() {
            candidates.sort_by_key(|(content, _)| std::cmp::Reverse(content.len()));
        }
        Some(Some(Self { by_first_byte }))
    }

    /// Calls `segment` for each stretch of `text`, in order; the text ones are never empty.
    pub fn split<'t>(&self, text: &'t str, mut segment: impl FnMut(Segment<'t>)) {
        let bytes = text.as_bytes();
        let (mut start, mut at) = (0, 0);
        while at < bytes.len() {
            let matched = self.by_first_byte.get(&bytes[at]).and_then(|candidates| {
                candidates
                    .iter()
                    .find(|(content, _)| bytes[at..].starts_with(content))
            });
            let Some((content, id)) = matched else {
                at += 1;
                continue;
            };
            if let Some(id) = id {
                if start < at {
                    segment(Segment::Text(&text[start..at]));
                }
                segment(Segment::Token(*id));
                start = at + content.len();
            }
            at += content.len();
        }
        if start < bytes.len() {
            segment(Segment::Text(&text[start..]));
        }
    }

    /// As [`AddedTokens::from_json`], for a tokenizer without a normalizer (none, or an empty
    /// `Sequence`), where the non-special tokens may also all be `normalized` (DeepSeek-V3's 14); `None`
    /// where some are and some are not.
    ///
    /// The `tokenizers` crate searches two tries, one after the other: the tokens that are not
    /// `normalized` in the raw text, then, in each segment left, the `normalized` ones in the segment's
    /// normalized text. If every non-special token is `normalized`, the first trie holds only special
    /// tokens, all dropped (special-token strings are text here), so it leaves the text whole; with no normalizer, the second then searches
    /// the raw text. That is [`AddedTokens::split`] over the second trie's tokens: the non-special ones
    /// and the `normalized` special ones (which hide what they overlap), with the others left out.
    pub fn from_json_without_normalizer(added_tokens: &serde_json::Value) -> Option<Option<Self>> {
        let Some(tokens) = added_tokens.as_array() else {
            return Some(None);
        };
        let non_special = || tokens.iter().filter(|t| t["special"] != true);
        if !non_special().all(|t| t["normalized"] == true) || non_special().next().is_none() {
            return Self::from_json(added_tokens);
        }
        if tokens.iter().any(|t| !t["normalized"].is_boolean()) {
            return None;
        }
        // The second trie's tokens, marked as matched in the raw text, which they are here.
        let second: Vec<serde_json::Value> = tokens
            .iter()
            .filter(|t| t["normalized"] == true)
            .map(|t| {
                let mut t = t.clone();
                t["normalized"] = false.into();
                t
            })
            .collect();
        Self::from_json(&serde_json::Value::Array(second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> AddedTokens {
        let flags = |id: u32, content: &str, special: bool| {
            serde_json::json!({"id": id, "content": content, "special": special,
                "single_word": false, "lstrip": false, "rstrip": false, "normalized": false})
        };
        let json = serde_json::json!([
            flags(0, "<|end|>", true),
            flags(1, "<think>", false),
            flags(2, "<th", false),
            flags(3, "d|>", false),
        ]);
        AddedTokens::from_json(&json).unwrap().unwrap()
    }

    fn segments(text: &str) -> Vec<Segment<'_>> {
        let mut out = Vec::new();
        tokens().split(text, |s| out.push(s));
        out
    }

    #[test]
    fn longest_match_wins_and_specials_stay_text_hiding_what_they_overlap() {
        use Segment::{Text, Token};
        assert_eq!(segments("a<think>b"), [Text("a"), Token(1), Text("b")]);
        assert_eq!(segments("<thin<th"), [Token(2), Text("in"), Token(2)]);
        // `d|>` inside the skipped special `<|end|>` is not found.
        assert_eq!(segments("x<|end|>y"), [Text("x<|end|>y")]);
        assert_eq!(segments(""), []);
    }

    #[test]
    fn without_a_normalizer_normalized_tokens_are_matched_as_the_second_trie_matches_them() {
        use Segment::{Text, Token};
        let token = |id: u32, content: &str, special: bool, normalized: bool| {
            serde_json::json!({"id": id, "content": content, "special": special,
                "single_word": false, "lstrip": false, "rstrip": false, "normalized": normalized})
        };
        // `<a|b>` (special, not normalized) is in the first trie: it hides nothing of the second's.
        // `<|EOT|>` (special, normalized) is in the second: it hides the `T|>` it overlaps.
        let json = serde_json::json!([
            token(0, "<a|b>", true, false),
            token(1, "<|EOT|>", true, true),
            token(2, "a|b", false, true),
            token(3, "T|>", false, true),
        ]);
        let added = AddedTokens::from_json_without_normalizer(&json)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        added.split("<a|b><|EOT|>T|>", |s| out.push(s));
        assert_eq!(out, [Text("<"), Token(2), Text("><|EOT|>"), Token(3)]);
        // Some normalized and some not: two tries this module does not implement.
        let mixed =
            serde_json::json!([token(2, "a|b", false, true), token(3, "T|>", false, false)]);
        assert!(AddedTokens::from_json_without_normalizer(&mixed).is_none());
        assert!(AddedTokens::from_json(&json).is_none());
    }

    #[test]
    fn flags_it_does_not_implement_are_refused() {
        for flag in ["single_word", "lstrip", "rstrip", "normalized"] {
            let mut token = serde_json::json!({"id": 1, "content": "<x>", "special": false,
                "single_word": false, "lstrip": false, "rstrip": false, "normalized": false});
            token[flag] = true.into();
            assert!(AddedTokens::from_json(&serde_json::json!([token])).is_none());
        }
    }
}
