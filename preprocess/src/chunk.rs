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
//! * **Regex pre-tokenizers** (GPT-2's `ByteLevel` regex, the cl100k/Llama-3 pattern, Tekken's pattern).
//!   No alternative matches `\n` followed by a letter (the optional prefix of a letter run excludes `\r\n`,
//!   whitespace runs hold no letters, punctuation runs end in `[\r\n/]*`), none has a lookbehind, and
//!   because the character before the `\n` is not whitespace, cutting the text after the `\n` cannot turn
//!   `\s+(?!\S)` into a longer match. So the matches of `text[a..p]` and of `text[p..b]` are exactly the
//!   matches of the whole text in those ranges.
//! * **SentencePiece-style BPE without a pre-tokenizer** (Llama 2, Mistral): the normalizer only prepends
//!   `▁` and replaces spaces, and no vocabulary entry contains `\n`, so no merge rule involves the `\n`
//!   symbol and the BPE on either side of it is independent.
//! * **BERT's WordPiece** (`BertNormalizer`, `BertPreTokenizer`, `WordPiece`). The normalizer maps the `\n`
//!   to a space (or keeps it, without `clean_text`) and acts on one character at a time, but for NFD's
//!   reordering of runs of non-starters: the `\n` is a starter (combining class 0), so no run crosses it.
//!   The pre-tokenizer splits at it (whitespace, dropped) and WordPiece encodes each word alone, so the
//!   words of `text[a..p]` and `text[p..b]` are those of the whole text in those ranges. (Any whitespace
//!   would do for this family; the rule above is the one cut for all.)
//!
//! What left context there is (Mistral's `Prepend("▁")` applies only at the start of the text) is given to
//! every piece but the first by a *guard*: the piece is encoded as `"\n" + piece`, and the ids of `"\n"`
//! alone are checked and stripped from the front. A tokenizer outside these families is never cut;
//! `tests/chunking.rs` checks cut against whole encodings for all four reference tokenizers.

use serde_json::Value;

/// Documents longer than this are cut into pieces of at least this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The text prepended to every piece but the first.
pub const GUARD: &str = "\n";

/// Pre-tokenizer regexes whose boundary behaviour the module documentation argues for.
const KNOWN_SPLIT_PATTERNS: [&str; 2] = [
    // cl100k_base, Llama 3.
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    // Tekken.
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];

/// Cuts long documents at hard boundaries; exists only for tokenizers of a family known to allow it.
#[derive(Clone, Debug)]
pub struct Chunker {
    chunk_bytes: usize,
}

impl Chunker {
    /// The chunker for the tokenizer described by `tokenizer_json`, or `None` when its pipeline is not one
    /// whose hard boundaries are known.
    pub fn for_tokenizer(tokenizer_json: &Value) -> Option<Self> {
        Self::with_chunk_bytes(tokenizer_json, CHUNK_BYTES)
    }

    /// As [`Chunker::for_tokenizer`], with another piece size (tests use small ones).
    pub fn with_chunk_bytes(tokenizer_json: &Value, chunk_bytes: usize) -> Option<Self> {
        let supported = match (
            &tokenizer_json["normalizer"],
            &tokenizer_json["pre_tokenizer"],
        ) {
            (Value::Null, pre) => regex_family(pre),
            (normalizer, Value::Null) => {
                sentencepiece_normalizer(normalizer) && newline_free_bpe(&tokenizer_json["model"])
            }
            (normalizer, pre) => bert_family(normalizer, pre, &tokenizer_json["model"]),
        } && no_added_token_spans_a_boundary(&tokenizer_json["added_tokens"]);
        supported.then_some(Self {
            chunk_bytes: chunk_bytes.max(1),
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
            if is_hard_boundary(bytes, cut) {
                return Some(cut);
            }
            from = cut;
        }
        None
    }
}

/// Whether `p` is a hard boundary (see the module documentation). `\n` and ASCII bytes never occur inside
/// a multi-byte UTF-8 character, so `p` is a character boundary.
fn is_hard_boundary(bytes: &[u8], p: usize) -> bool {
    p >= 2
        && p < bytes.len()
        && bytes[p - 1] == b'\n'
        && bytes[p - 2].is_ascii_graphic()
        && bytes[p].is_ascii_alphabetic()
}

/// Added tokens are matched before pre-tokenization, so one holding `\n` followed by a letter could span a
/// cut, and one that takes the whitespace beside it (`lstrip`, `rstrip`) could take the `\n` before a cut
/// from the next piece (issue 18: Phi-3's `</s>`); a tokenizer with such a token is never cut.
fn no_added_token_spans_a_boundary(added_tokens: &Value) -> bool {
    added_tokens.as_array().is_none_or(|tokens| {
        tokens.iter().all(|token| {
            token["lstrip"] != true
                && token["rstrip"] != true
                && token["content"].as_str().is_none_or(|c| {
                    !c.as_bytes()
                        .windows(2)
                        .any(|w| w[0] == b'\n' && w[1].is_ascii_alphabetic())
                })
        })
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
                && split["behavior"] == "Isolated"
                && split["invert"] == false
                && split["pattern"]["Regex"]
                    .as_str()
                    .is_some_and(|p| KNOWN_SPLIT_PATTERNS.contains(&p))
                && byte_level(&steps[1], false)
        }
        _ => false,
    }
}

fn bert_family(normalizer: &Value, pre_tokenizer: &Value, model: &Value) -> bool {
    normalizer["type"] == "BertNormalizer"
        && pre_tokenizer["type"] == "BertPreTokenizer"
        && model["type"] == "WordPiece"
}

fn sentencepiece_normalizer(normalizer: &Value) -> bool {
    let Some(steps) = normalizer["normalizers"].as_array() else {
        return false;
    };
    normalizer["type"] == "Sequence"
        && steps.iter().all(|step| match step["type"].as_str() {
            Some("Prepend") => step["prepend"] == "\u{2581}",
            Some("Replace") => step["pattern"]["String"] == " " && step["content"] == "\u{2581}",
            _ => false,
        })
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
        for strip in ["lstrip", "rstrip"] {
            added_across["added_tokens"] =
                serde_json::json!([{"id": 2, "content": "</s>", strip: true}]);
            assert!(Chunker::for_tokenizer(&added_across).is_none(), "{strip}");
        }
    }
}
