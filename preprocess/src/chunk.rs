//! Where a long document may be cut so that encoding the pieces gives exactly the ids of encoding it whole.
//!
//! The `tokenizers` library holds about 16 bytes of alignment per input byte plus a `String` per token while
//! it encodes, so a 200 MB document would need several GiB. [`Chunker`] cuts such a document into pieces
//! of about [`CHUNK_BYTES`] at *hard boundaries*: byte positions `p` where
//!
//! * `text[p-1]` is `\n`,
//! * the character before it is a visible ASCII character (not whitespace), and
//! * `text[p]` is an ASCII letter.
//!
//! For the tokenizer families below no pre-token and no BPE merge spans such a `p`, and nothing left of
//! `p` changes how the text right of it is split:
//!
//! * **Regex pre-tokenizers** (GPT-2's `ByteLevel` regex, the cl100k/Llama-3 pattern, Tekken's pattern,
//!   o200k's). No alternative matches `\n` followed by a letter (the optional prefix of a letter run
//!   excludes `\r\n`, whitespace runs hold no letters, punctuation runs end in `[\r\n/]*` — the `/` of
//!   Tekken's and o200k's cannot take the letter at `p` either — and o200k's optional contraction after a
//!   letter run is an apostrophe and letters), none has a lookbehind, and because the character before
//!   the `\n` is not whitespace, cutting the text after the `\n` cannot turn `\s+(?!\S)` into a longer
//!   match. Every greedy run that reaches the `\n` (`[\r\n/]*`, `\s*[\r\n]+`, `\s+`) stops at `p`
//!   in the whole text, at the letter, as it does at the end of the cut text. So the matches of
//!   `text[a..p]` and of `text[p..b]` are exactly the matches of the whole text in those ranges.
//! * **DeepSeek-V3's sequence of splits** (`\p{N}{1,3}`, then CJK runs, then its word pattern, each within
//!   the pieces of the one before; no normalizer). Neither `\n` nor an ASCII letter is a number or a CJK
//!   character, so no match of the first two splits spans `p` (a digit run is grouped by threes from its
//!   own start, on its side of `p`), and the piece of the third split that holds `p` is cut exactly at
//!   `p`. In it, no alternative matches `\n` followed by a letter: ASCII punctuation then ASCII letters
//!   and the letter-or-mark run hold no `\n` (the optional character before the run excludes `\r\n`), a
//!   punctuation-or-symbol run ends in `[\r\n]*`, and whitespace runs hold no letters. As above, with the
//!   character before the `\n` not whitespace, the `\n` ends a punctuation run or is matched alone by
//!   `\s*[\r\n]+`, before `\s+(?!\S)`, the one alternative that reads past its match, is tried; none looks
//!   behind.
//! * **SentencePiece-style BPE** (Llama 2, Mistral, Phi-3): the normalizer only prepends `▁` and replaces
//!   spaces, the pre-tokenizer is none or a split at U+0020 (which finds nothing once spaces are `▁`), no
//!   vocabulary entry contains `\n`, so no merge rule involves the `\n` symbol and the BPE on either side
//!   of it is independent, and no added token contains `\n` (one ending at `p` would start a new segment
//!   there, with its own `Prepend`, where the guard below puts a `\n` in front).
//! * **SentencePiece-style BPE with line breaks as added tokens** (Gemma-3: `\n`, `\n\n`, … are
//!   non-special added tokens without flags, and every added token holding a `\n` is such a run): added
//!   tokens are cut out of the raw text first and each segment between them is normalized and encoded on
//!   its own. No token holds `\n` and a letter, and the character before the `\n` at `p - 1` is not one,
//!   so that `\n` is matched as the token `\n` alone, in the whole text and in the pieces alike: the
//!   segments, hence the ids, are the same on both sides of `p`.
//! * **BERT's WordPiece** (`BertNormalizer`, `BertPreTokenizer`, `WordPiece`). The normalizer maps the `\n`
//!   to a space (or keeps it, without `clean_text`) and acts on one character at a time, but for NFD's
//!   reordering of runs of non-starters: the `\n` is a starter (combining class 0), so no run crosses it.
//!   The pre-tokenizer splits at it (whitespace, dropped) and WordPiece encodes each word alone, so the
//!   words of `text[a..p]` and `text[p..b]` are those of the whole text in those ranges. (Any whitespace
//!   would do for this family; the rule above is the one cut for all.)
//!
//! Added tokens are matched before all of this, so none may hold `\n` followed by a letter (it could span
//! `p`), and where a token that takes the whitespace beside it (`lstrip`, `rstrip`) would take the `\n`
//! at `p - 1` (Phi-3's `</s>` right before it: `x</s>\nabc` is `[921, 2, 25638]` whole, the `\n` swallowed
//! and `abc` a new segment with its own `▁`; cut after the `\n` it was `[921, 2, 10736]`), `p` is not a
//! hard boundary: not where the text before the `\n` ends with an `rstrip` token's content, nor where the
//! text from `p` starts with an `lstrip` token's content. Stripping reaches no further: it stops at the
//! visible character before the `\n` and at the letter after it.
//!
//! What left context there is (Mistral's `Prepend("▁")` applies only at the start of the text) is given to
//! every piece but the first by a *guard*: the piece is encoded as `"\n" + piece`, and the ids of `"\n"`
//! alone are checked and stripped from the front. A tokenizer outside these families is never cut;
//! `tests/chunking.rs` checks cut against whole encodings for all four reference tokenizers,
//! `tests/tokenizer_fixtures.rs` for Phi-3, Gemma-3, gpt-oss, GPT-4o and DeepSeek-V3, `tests/wordpiece.rs`
//! for BERT.

use serde_json::Value;

/// Documents longer than this are cut into pieces of at least this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The text prepended to every piece but the first.
pub const GUARD: &str = "\n";

/// Pre-tokenizer regexes whose boundary behaviour the module documentation argues for.
const KNOWN_SPLIT_PATTERNS: [&str; 3] = [
    // cl100k_base, Llama 3.
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    // Tekken.
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    // o200k: GPT-4o, gpt-oss.
    crate::pretok::O200K,
];

/// Cuts long documents at hard boundaries; exists only for tokenizers of a family known to allow it.
#[derive(Clone, Debug)]
pub struct Chunker {
    chunk_bytes: usize,
    /// Contents of the added tokens with `lstrip`: no cut right before one.
    lstrip: Vec<Box<[u8]>>,
    /// Contents of the added tokens with `rstrip`: no cut after one and a `\n`.
    rstrip: Vec<Box<[u8]>>,
}

impl Chunker {
    /// The chunker for the tokenizer described by `tokenizer_json`, or `None` when its pipeline is not one
    /// whose hard boundaries are known.
    pub fn for_tokenizer(tokenizer_json: &Value) -> Option<Self> {
        Self::with_chunk_bytes(tokenizer_json, CHUNK_BYTES)
    }

    /// As [`Chunker::for_tokenizer`], with another piece size (tests use small ones).
    pub fn with_chunk_bytes(tokenizer_json: &Value, chunk_bytes: usize) -> Option<Self> {
        let added_tokens = &tokenizer_json["added_tokens"];
        let supported = match (
            &tokenizer_json["normalizer"],
            &tokenizer_json["pre_tokenizer"],
        ) {
            (Value::Null, pre) => regex_family(pre),
            (normalizer, pre)
                if sentencepiece_normalizer(normalizer) && splits_nothing(pre, normalizer) =>
            {
                tokenizer_json["model"]["type"] == "BPE"
                    && (newline_free_bpe(&tokenizer_json["model"])
                        && no_added_token_holds_a_newline(added_tokens)
                        || newlines_are_plain_added_tokens(added_tokens))
            }
            // An empty sequence (DeepSeek-V3) normalizes nothing.
            (normalizer, pre)
                if normalizer["type"] == "Sequence"
                    && normalizer["normalizers"]
                        .as_array()
                        .is_some_and(Vec::is_empty) =>
            {
                regex_family(pre)
            }
            (normalizer, pre) => bert_family(normalizer, pre, &tokenizer_json["model"]),
        } && no_added_token_spans_a_boundary(added_tokens);
        let stripping = |flag: &str| -> Vec<Box<[u8]>> {
            added_tokens
                .as_array()
                .into_iter()
                .flatten()
                .filter(|token| token[flag] == true)
                .filter_map(|token| Some(token["content"].as_str()?.as_bytes().into()))
                .collect()
        };
        supported.then(|| Self {
            chunk_bytes: chunk_bytes.max(1),
            lstrip: stripping("lstrip"),
            rstrip: stripping("rstrip"),
        })
    }

    /// Documents longer than this are cut.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// Splits `text` into consecutive pieces; their concatenation is `text`. A text without a hard boundary
    /// past the piece size stays one piece.
    pub fn pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = Vec::new();
        let mut start = 0;
        while let Some(cut) = self.next_cut(text, start) {
            pieces.push(&text[start..cut]);
            start = cut;
        }
        pieces.push(&text[start..]);
        pieces
    }

    /// The first hard boundary at least `chunk_bytes` after `start`, leaving a non-empty rest.
    fn next_cut(&self, text: &str, start: usize) -> Option<usize> {
        let bytes = text.as_bytes();
        let mut from = start.checked_add(self.chunk_bytes)?.max(start + 1);
        while from < bytes.len() {
            let newline = from + bytes[from..].iter().position(|&b| b == b'\n')?;
            let cut = newline + 1;
            if self.is_hard_boundary(bytes, cut) {
                return Some(cut);
            }
            from = cut;
        }
        None
    }
}

impl Chunker {
    /// Whether `p` is a hard boundary (see the module documentation). `\n` and ASCII bytes never occur
    /// inside a multi-byte UTF-8 character, so `p` is a character boundary.
    fn is_hard_boundary(&self, bytes: &[u8], p: usize) -> bool {
        p >= 2
            && p < bytes.len()
            && bytes[p - 1] == b'\n'
            && bytes[p - 2].is_ascii_graphic()
            && bytes[p].is_ascii_alphabetic()
            && !self.rstrip.iter().any(|c| bytes[..p - 1].ends_with(c))
            && !self.lstrip.iter().any(|c| bytes[p..].starts_with(c))
    }
}

/// Added tokens are matched before pre-tokenization, so one holding `\n` followed by a letter could span a
/// cut; a tokenizer with such a token is never cut.
fn no_added_token_spans_a_boundary(added_tokens: &Value) -> bool {
    added_tokens.as_array().is_none_or(|tokens| {
        tokens.iter().all(|token| {
            token["content"].as_str().is_none_or(|c| {
                !c.as_bytes()
                    .windows(2)
                    .any(|w| w[0] == b'\n' && w[1].is_ascii_alphabetic())
            })
        })
    })
}

fn no_added_token_holds_a_newline(added_tokens: &Value) -> bool {
    added_tokens.as_array().is_none_or(|tokens| {
        tokens
            .iter()
            .all(|token| token["content"].as_str().is_some_and(|c| !c.contains('\n')))
    })
}

/// Whether `\n` is a non-special added token matched in the raw text and every added token holding a
/// `\n` is a run of them, without flags (Gemma-3).
fn newlines_are_plain_added_tokens(added_tokens: &Value) -> bool {
    let plain = |token: &Value| {
        ["special", "normalized", "lstrip", "rstrip", "single_word"]
            .iter()
            .all(|flag| token[*flag] == false)
    };
    let Some(tokens) = added_tokens.as_array() else {
        return false;
    };
    tokens
        .iter()
        .any(|token| token["content"] == "\n" && plain(token))
        && tokens.iter().all(|token| {
            token["content"]
                .as_str()
                .is_some_and(|c| !c.contains('\n') || c.bytes().all(|b| b == b'\n') && plain(token))
        })
}

fn regex_family(pre_tokenizer: &Value) -> bool {
    let byte_level = |v: &Value, use_regex: bool| {
        v["type"] == "ByteLevel" && v["add_prefix_space"] == false && v["use_regex"] == use_regex
    };
    if byte_level(pre_tokenizer, true) {
        return true;
    }
    match (
        pre_tokenizer["type"].as_str(),
        pre_tokenizer["pretokenizers"].as_array(),
    ) {
        (Some("Sequence"), Some(steps)) if steps.len() == 2 => {
            let split = &steps[0];
            split["type"] == "Split"
                && crate::byte_bpe::isolates(split)
                && split["pattern"]["Regex"]
                    .as_str()
                    .is_some_and(|p| KNOWN_SPLIT_PATTERNS.contains(&p))
                && byte_level(&steps[1], false)
        }
        (Some("Sequence"), Some(steps)) if steps.len() == 4 => {
            steps[..3]
                .iter()
                .zip(crate::pretok::deepseek::SPLITS)
                .all(|(split, regex)| {
                    split["type"] == "Split"
                        && split["behavior"] == "Isolated"
                        && split["invert"] == false
                        && split["pattern"]["Regex"] == regex
                })
                && byte_level(&steps[3], false)
        }
        _ => false,
    }
}

/// BERT's pipeline: `BertNormalizer`, `BertPreTokenizer`, `WordPiece`.
fn bert_family(normalizer: &Value, pre_tokenizer: &Value, model: &Value) -> bool {
    normalizer["type"] == "BertNormalizer"
        && pre_tokenizer["type"] == "BertPreTokenizer"
        && model["type"] == "WordPiece"
}

/// `Prepend("▁")` and `Replace(" ", "▁")` steps, in a sequence or a `Replace` alone.
fn sentencepiece_normalizer(normalizer: &Value) -> bool {
    let step = |step: &Value| match step["type"].as_str() {
        Some("Prepend") => step["prepend"] == "\u{2581}",
        Some("Replace") => step["pattern"]["String"] == " " && step["content"] == "\u{2581}",
        _ => false,
    };
    if normalizer["type"] == "Replace" {
        return step(normalizer);
    }
    let Some(steps) = normalizer["normalizers"].as_array() else {
        return false;
    };
    normalizer["type"] == "Sequence" && steps.iter().all(step)
}

/// No pre-tokenizer, or a split at U+0020 (not inverted), which finds nothing once `normalizer` (a
/// [`sentencepiece_normalizer`]) has replaced every space (Gemma-3's `Split(" ", MergedWithPrevious)`).
fn splits_nothing(pre_tokenizer: &Value, normalizer: &Value) -> bool {
    let replaces = normalizer["type"] == "Replace"
        || normalizer["normalizers"]
            .as_array()
            .is_some_and(|steps| steps.iter().any(|s| s["type"] == "Replace"));
    pre_tokenizer.is_null()
        || replaces
            && pre_tokenizer["type"] == "Split"
            && pre_tokenizer["pattern"]["String"] == " "
            && pre_tokenizer["invert"] == false
}

fn newline_free_bpe(model: &Value) -> bool {
    model["type"] == "BPE"
        && model["vocab"]
            .as_object()
            .is_some_and(|vocab| vocab.keys().all(|token| !token.contains('\n')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2_like() -> Value {
        serde_json::json!({
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        })
    }

    #[test]
    fn pieces_cut_only_at_hard_boundaries_and_cover_the_text() {
        let chunker = Chunker::with_chunk_bytes(&gpt2_like(), 4).unwrap();
        let text = "ab\nCd \nEf\n\nGh.\nij\n1k";
        let pieces = chunker.pieces(text);
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces, ["ab\nCd \nEf\n\nGh.\n", "ij\n1k"]);
    }

    #[test]
    fn text_without_boundaries_is_one_piece() {
        let chunker = Chunker::with_chunk_bytes(&gpt2_like(), 1).unwrap();
        assert_eq!(
            chunker.pieces("no line breaks at all"),
            ["no line breaks at all"]
        );
        assert_eq!(chunker.pieces(""), [""]);
        assert_eq!(chunker.pieces("x\n"), ["x\n"]);
    }

    #[test]
    fn deepseek_v3s_splits_without_a_normalizer_are_cut() {
        let split = |regex: &str| serde_json::json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
        let [digits, cjk, words] = crate::pretok::deepseek::SPLITS;
        let mut deepseek = serde_json::json!({
            "normalizer": {"type": "Sequence", "normalizers": []},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(digits), split(cjk), split(words),
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
        });
        assert!(Chunker::for_tokenizer(&deepseek).is_some());
        // The third pattern with escapes where DeepSeek-V3's has literal line breaks is another text.
        deepseek["pre_tokenizer"]["pretokenizers"][2] = split(&words.replace('\n', r"\n"));
        assert!(Chunker::for_tokenizer(&deepseek).is_none());
        deepseek["pre_tokenizer"]["pretokenizers"][2] = split(words);
        deepseek["normalizer"] =
            serde_json::json!({"type": "Sequence", "normalizers": [{"type": "NFC"}]});
        assert!(Chunker::for_tokenizer(&deepseek).is_none());
    }

    #[test]
    fn unknown_pipelines_are_not_cut() {
        let unknown = serde_json::json!({
            "normalizer": {"type": "NFKC"},
            "pre_tokenizer": {"type": "Whitespace"},
        });
        assert!(Chunker::for_tokenizer(&unknown).is_none());
        let odd_regex = serde_json::json!({
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?<=a)b"}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
        });
        assert!(Chunker::for_tokenizer(&odd_regex).is_none());
        let merges_newline = serde_json::json!({
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}]},
            "pre_tokenizer": null,
            "model": {"type": "BPE", "vocab": {"a\n": 0}},
        });
        assert!(Chunker::for_tokenizer(&merges_newline).is_none());
        let mut added_across = gpt2_like();
        added_across["added_tokens"] =
            serde_json::json!([{"id": 7, "content": "<|im_start|>\nassistant"}]);
        assert!(Chunker::for_tokenizer(&added_across).is_none());
        added_across["added_tokens"] = serde_json::json!([{"id": 7, "content": "<|im_start|>"}]);
        assert!(Chunker::for_tokenizer(&added_across).is_some());
        // A stripping token is no reason to refuse, but no cut is made where it would strip the `\n`.
        added_across["added_tokens"] = serde_json::json!([
            {"id": 2, "content": "</s>", "rstrip": true},
            {"id": 3, "content": "ab", "lstrip": true},
        ]);
        let chunker = Chunker::with_chunk_bytes(&added_across, 1).unwrap();
        assert_eq!(
            chunker.pieces("a.\nb</s>\nc.\nabd.\nxe"),
            ["a.\n", "b</s>\nc.\nabd.\n", "xe"]
        );
    }
}
