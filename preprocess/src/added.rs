//! Non-special added tokens, matched in document text before anything else, as the `tokenizers` crate's
//! `AddedVocabulary` does even when special tokens are encoded as text.
//!
//! The `tokenizers` crate finds every added token (special or not) with one leftmost-longest automaton
//! over the raw text; with `encode_special_tokens` a special token's match is then dropped, its text left
//! to the segment around it, and the search goes on *after* it (so it hides any token overlapping it). A
//! non-special match cuts the text: it becomes its own id, and each segment between matches is normalized
//! and pre-tokenized on its own. [`AddedTokens`] does the same search (an `aho-corasick` automaton,
//! leftmost-longest, as fast with Gemma-3's 6,415 tokens as with Qwen3's 26) and applies the flags of
//! `added_vocabulary.rs`'s `find_matches`, in its order:
//!
//! * `single_word`: the match is dropped (its text stays in the segment, and what it overlapped stays
//!   hidden) unless the character before it and the one after it are not word characters (`\w`, the
//!   `regex` crate's: `Alphabetic`, `M`, `Nd`, `Pc`, `Join_Control`) or the text ends there;
//! * `lstrip`: the whitespace (`\s`: Unicode `White_Space`, as `char::is_whitespace`) before the match
//!   joins the token, back to the end of the previous token at most;
//! * `rstrip`: the whitespace after the match joins the token (a later match may still start inside it:
//!   its text segment is then empty, and the next one starts where *that* token ends, as in the crate).
//!
//! Only non-special tokens with `normalized: false` (matched in the raw text) are taken;
//! [`AddedTokens::from_json`] refuses a tokenizer with a non-special `normalized` one.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use rustc_hash::FxHashSet as HashSet;

/// The added tokens of a `tokenizer.json` in one automaton.
#[derive(Debug)]
pub struct AddedTokens {
    matcher: AhoCorasick,
    /// What each of the matcher's patterns is, by pattern index.
    tokens: Box<[Token]>,
}

/// An added token's id (`None` for a special token, which is matched only to be skipped) and flags.
#[derive(Clone, Copy, Debug)]
struct Token {
    id: Option<u32>,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
}

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
    /// are none; `None` if one is `normalized`, or a flag or content is malformed or repeated.
    pub fn from_json(added_tokens: &serde_json::Value) -> Option<Option<Self>> {
        let Some(list) = added_tokens.as_array() else {
            return Some(None);
        };
        if list.iter().all(|t| t["special"] == true) {
            return Some(None);
        }
        let flag = |token: &serde_json::Value, name: &str| token[name].as_bool();
        let (mut patterns, mut tokens) = (Vec::new(), Vec::new());
        let mut seen = HashSet::default();
        for token in list {
            let content = token["content"].as_str()?;
            let special = flag(token, "special")?;
            let normalized = flag(token, "normalized")?;
            if !seen.insert(content) {
                return None;
            }
            // The crate ignores an empty token; a special `normalized` one is searched for in the
            // normalized text only, where it is skipped (no non-special token taken here is there).
            if content.is_empty() || special && normalized {
                continue;
            }
            if normalized {
                return None;
            }
            let id = u32::try_from(token["id"].as_u64()?).ok()?;
            patterns.push(content);
            tokens.push(Token {
                id: (!special).then_some(id),
                single_word: flag(token, "single_word")?,
                lstrip: flag(token, "lstrip")?,
                rstrip: flag(token, "rstrip")?,
            });
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)
            .ok()?;
        Some(Some(Self {
            matcher,
            tokens: tokens.into(),
        }))
    }

    /// Appends `text`'s ids to `out`: each added token's id, and between them what `encode` appends for
    /// the stretch of text (all of `text` when `added` is `None`). Every fast encoder's outer loop.
    pub fn encode_around(
        added: Option<&Self>,
        text: &str,
        out: &mut Vec<u32>,
        mut encode: impl FnMut(&str, &mut Vec<u32>),
    ) {
        let Some(added) = added else {
            encode(text, out);
            return;
        };
        added.split(text, |segment| match segment {
            Segment::Text(text) => encode(text, out),
            Segment::Token(id) => out.push(id),
        });
    }

    /// Calls `segment` for each stretch of `text`, in order; the text ones are never empty.
    pub fn split<'t>(&self, text: &'t str, mut segment: impl FnMut(Segment<'t>)) {
        let mut start_offset = 0;
        for found in self.matcher.find_iter(text) {
            let token = self.tokens[found.pattern().as_usize()];
            let Some(id) = token.id else {
                continue;
            };
            let (mut start, mut stop) = (found.start(), found.end());
            if token.single_word
                && (text[..start].chars().next_back().is_some_and(is_word)
                    || text[stop..].chars().next().is_some_and(is_word))
            {
                continue;
            }
            if token.lstrip {
                start = text[..start]
                    .trim_end_matches(char::is_whitespace)
                    .len()
                    .max(start_offset);
            }
            if token.rstrip {
                stop = text.len() - text[stop..].trim_start_matches(char::is_whitespace).len();
            }
            if start_offset < start {
                segment(Segment::Text(&text[start_offset..start]));
            }
            segment(Segment::Token(id));
            start_offset = stop;
        }
        if start_offset < text.len() {
            segment(Segment::Text(&text[start_offset..]));
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

/// Whether every token of `added_tokens` has the id its `id` field says once the `tokenizers` crate has
/// loaded it: the crate takes a token's id from the model's vocabulary (`model_id`, of `model_len` tokens)
/// where it is there, and numbers the others on from `model_len` in the file's order.
pub fn ids_as_loaded(
    added_tokens: &serde_json::Value,
    model_len: usize,
    model_id: impl Fn(&str) -> Option<u32>,
) -> bool {
    let Ok(mut next) = u64::try_from(model_len) else {
        return false;
    };
    added_tokens.as_array().into_iter().flatten().all(|token| {
        let Some(content) = token["content"].as_str() else {
            return false;
        };
        if content.is_empty() {
            return true;
        }
        let id = model_id(content).map_or_else(
            || {
                next += 1;
                next - 1
            },
            u64::from,
        );
        token["id"].as_u64() == Some(id)
    })
}

/// `\w` of the `regex` crate, which `single_word` tests.
fn is_word(c: char) -> bool {
    regex_syntax::is_word_character(c)
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

    fn with_flag(content: &str, flag: &str) -> serde_json::Value {
        let mut token = serde_json::json!({"id": 9, "content": content, "special": false,
            "single_word": false, "lstrip": false, "rstrip": false, "normalized": false});
        token[flag] = true.into();
        token
    }

    fn split_with(tokens: &serde_json::Value, text: &str) -> Vec<String> {
        let tokens = AddedTokens::from_json(tokens).unwrap().unwrap();
        let mut out = Vec::new();
        tokens.split(text, |s| {
            out.push(match s {
                Segment::Text(t) => t.to_owned(),
                Segment::Token(id) => format!("#{id}"),
            });
        });
        out
    }

    #[test]
    fn strip_flags_take_the_whitespace_beside_the_token() {
        let rstrip = serde_json::json!([with_flag("</s>", "rstrip")]);
        assert_eq!(split_with(&rstrip, "x</s>\n abc"), ["x", "#9", "abc"]);
        assert_eq!(split_with(&rstrip, "x </s>\u{3000}"), ["x ", "#9"]);
        let lstrip = serde_json::json!([with_flag("<m>", "lstrip")]);
        assert_eq!(split_with(&lstrip, "a \t<m> b"), ["a", "#9", " b"]);
        // Back to the end of the previous token, no further.
        assert_eq!(split_with(&lstrip, "<m>  <m>"), ["#9", "#9"]);
    }

    #[test]
    fn a_single_word_token_inside_a_word_stays_text_and_hides_what_it_overlaps() {
        let tokens = serde_json::json!([with_flag("ab", "single_word"), with_flag("bc", "rstrip")]);
        assert_eq!(split_with(&tokens, "ab c"), ["#9", " c"]);
        assert_eq!(split_with(&tokens, "xabc"), ["xabc"]);
        assert_eq!(split_with(&tokens, "ab\u{301}"), ["ab\u{301}"]);
        assert_eq!(split_with(&tokens, "é ab."), ["é ", "#9", "."]);
    }

    #[test]
    fn normalized_non_special_tokens_and_repeated_contents_are_refused() {
        let token = with_flag("<x>", "normalized");
        assert!(AddedTokens::from_json(&serde_json::json!([token])).is_none());
        let token = with_flag("<x>", "lstrip");
        assert!(AddedTokens::from_json(&serde_json::json!([token, token])).is_none());
    }

    #[test]
    fn ids_are_checked_against_those_the_tokenizers_crate_gives() {
        let vocab = |t: &str| (t == "a").then_some(0);
        let tokens = |ids: [u32; 3]| {
            serde_json::json!([{"id": ids[0], "content": "<x>"}, {"id": ids[1], "content": "a"},
                {"id": ids[2], "content": "<y>"}])
        };
        assert!(ids_as_loaded(&tokens([5, 0, 6]), 5, vocab));
        assert!(!ids_as_loaded(&tokens([5, 1, 6]), 5, vocab));
        assert!(!ids_as_loaded(&tokens([6, 0, 5]), 5, vocab));
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
}
