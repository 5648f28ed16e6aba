//! A fast, exact encoder for BERT-style WordPiece `tokenizer.json`s (`bert-base-uncased`, `-cased`,
//! multilingual): `BertNormalizer`, `BertPreTokenizer`, a `WordPiece` model, non-special added tokens
//! cut out first ([`crate::added`]).
//!
//! The `tokenizers` crate's pipeline, step for step (its `normalizers/bert.rs`, `pre_tokenizers/bert.rs`,
//! `models/wordpiece/mod.rs`), with its own character tables (`unicode_categories`, and
//! `unicode-normalization-alignments` for NFD, Unicode 9) so that no character is classified differently:
//!
//! 1. clean text: drop `\0`, U+FFFD and "control" characters (Cc, Cf, Co but `\t\n\r`), map whitespace
//!    (`char::is_whitespace`) to a space; 2. put spaces around CJK ideographs; 3. strip accents (set, or
//!    unset and lowercasing): NFD, then drop nonspacing marks (Mn); 4. lowercase each character
//!    (`char::to_lowercase`: `İ` becomes two);
//! 5. split at whitespace (dropped), and each punctuation character (ASCII punctuation or Unicode `P*`)
//!    alone; 6. per word, greedy longest-prefix WordPiece with the continuing-subword prefix, `unk` for a
//!    word over `max_input_chars_per_word` characters or one with no cover.
//!
//! Steps 1–4 act on one character at a time except NFD's canonical reordering, which stably sorts each
//! run of non-starters (combining class ≠ 0) by class, and so sees across the characters clean-text
//! drops. A *simple* character is one whose cleaned form decomposes into at least one starter and
//! otherwise only nonspacing marks (or any character, without accent stripping). The marks are dropped
//! after the sort, and dropping elements commutes with a stable sort, so only the order of the kept
//! non-starters matters; a simple character has none, and its starter ends every run. So the
//! normalization of a text is the concatenation of that of its simple characters (looked up in a table,
//! ASCII in its own) and of the maximal stretches between them (normalized by the whole pipeline): `é`
//! is simple, a lone U+0301 or an ASCII control character is not. The normalized text is then split
//! (character classes in a table too) and each word's ids come from the per-thread [`Cache`].
//!
//! [`WordPiece::from_json`] returns `None` for any `tokenizer.json` of another shape (the caller then uses
//! the `tokenizers` encoder).

use rustc_hash::FxHashMap as HashMap;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;
use unicode_normalization_alignments::char::canonical_combining_class;

use crate::added::AddedTokens;
use crate::bpe::Cache;

/// The encoder (immutable, shared by threads); each thread keeps its own [`Cache`].
#[derive(Debug)]
pub struct WordPiece {
    normalizer: BertNormalizer,
    /// Each ASCII byte's normalized byte, or [`NOT_ONE_BYTE`] (dropped or not simple).
    ascii: [u8; 128],
    /// Each BMP character's normalization when it is simple: `offset << 8 | len` in `outputs`;
    /// [`NOT_SIMPLE`] otherwise.
    bmp: Box<[u32]>,
    outputs: Box<[u8]>,
    /// Each BMP character's class for the pre-tokenizer.
    classes: Box<[Class]>,
    /// Tokens that may start a word.
    first: HashMap<Box<str>, u32>,
    /// Tokens that begin with the continuing-subword prefix, without it.
    continuing: HashMap<Box<str>, u32>,
    /// The longest key of `first` and of `continuing`, in bytes.
    max_first_bytes: usize,
    max_continuing_bytes: usize,
    unk_id: u32,
    max_input_chars_per_word: usize,
    /// The non-special added tokens, if any.
    added: Option<AddedTokens>,
}

const NOT_ONE_BYTE: u8 = 0xff;
const NOT_SIMPLE: u32 = u32::MAX;

/// What the pre-tokenizer does with a character of the normalized text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Part of a word.
    Word,
    /// Splits, and is dropped.
    Space,
    /// A piece of its own.
    Punctuation,
}

/// `BertNormalizer`'s flags, `strip_accents` resolved.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::struct_excessive_bools)] // the four flags of the JSON, each independent of the others
struct BertNormalizer {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

/// The `tokenizers` crate's `is_chinese_char`: the CJK ideograph blocks.
fn is_chinese_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x2_0000..=0x2_A6DF
            | 0x2_A700..=0x2_B73F
            | 0x2_B740..=0x2_B81F
            | 0x2_B920..=0x2_CEAF
            | 0xF900..=0xFAFF
            | 0x2_F800..=0x2_FA1F
    )
}

/// Characters clean-text drops: `\0`, U+FFFD, and "other" ones (Cc, Cf, Co) but `\t`, `\n`, `\r`.
fn is_dropped(c: char) -> bool {
    c == '\0' || c == '\u{fffd}' || (!matches!(c, '\t' | '\n' | '\r') && c.is_other())
}

fn class_of(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if c.is_ascii_punctuation() || c.is_punctuation() {
        Class::Punctuation
    } else {
        Class::Word
    }
}

impl BertNormalizer {
    fn from_json(json: &serde_json::Value) -> Option<Self> {
        if json["type"] != "BertNormalizer" {
            return None;
        }
        let flag = |key: &str| json[key].as_bool();
        let lowercase = flag("lowercase")?;
        let strip_accents = match &json["strip_accents"] {
            serde_json::Value::Null => lowercase,
            v => v.as_bool()?,
        };
        Some(Self {
            clean_text: flag("clean_text")?,
            handle_chinese_chars: flag("handle_chinese_chars")?,
            strip_accents,
            lowercase,
        })
    }

    /// Steps 1 and 2 for one character, appended to `out`.
    fn clean_and_pad(self, c: char, out: &mut String) {
        let c = if self.clean_text {
            if is_dropped(c) {
                return;
            }
            // The crate's `is_whitespace` adds `\t\n\r`, which `char::is_whitespace` has already.
            if c.is_whitespace() { ' ' } else { c }
        } else {
            c
        };
        if self.handle_chinese_chars && is_chinese_char(c) {
            out.extend([' ', c, ' ']);
        } else {
            out.push(c);
        }
    }

    /// The whole pipeline over `text`, appended to `out`; `scratch` is working space.
    fn normalize(self, text: &str, scratch: &mut String, out: &mut Vec<u8>) {
        scratch.clear();
        for c in text.chars() {
            self.clean_and_pad(c, scratch);
        }
        let mut push = |c: char| {
            let mut utf8 = [0u8; 4];
            if self.lowercase {
                for c in c.to_lowercase() {
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            } else {
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        };
        if self.strip_accents {
            for (c, _) in scratch.as_str().nfd() {
                if !c.is_mark_nonspacing() {
                    push(c);
                }
            }
        } else {
            scratch.chars().for_each(push);
        }
    }

    /// Whether `c` is simple (see the module documentation); `scratch` is working space.
    fn is_simple(self, c: char, scratch: &mut String) -> bool {
        if !self.strip_accents {
            return true;
        }
        scratch.clear();
        self.clean_and_pad(c, scratch);
        let mut has_starter = false;
        for (d, _) in scratch.as_str().nfd() {
            if canonical_combining_class(d) == 0 {
                has_starter = true;
            } else if !d.is_mark_nonspacing() {
                return false;
            }
        }
        has_starter
    }
}

impl WordPiece {
    /// The encoder of `json` (a parsed `tokenizer.json`) if it has the shape this module implements;
    /// `None` otherwise.
    pub fn from_json(json: &serde_json::Value) -> Option<Self> {
        let model = &json["model"];
        if model["type"] != "WordPiece" || json["pre_tokenizer"]["type"] != "BertPreTokenizer" {
            return None;
        }
        let normalizer = BertNormalizer::from_json(&json["normalizer"])?;
        let added = AddedTokens::from_json(&json["added_tokens"])?;
        let prefix = model["continuing_subword_prefix"].as_str()?;
        let max_input_chars_per_word =
            usize::try_from(model["max_input_chars_per_word"].as_u64()?).ok()?;
        let (mut first, mut continuing) = (HashMap::default(), HashMap::default());
        for (token, id) in model["vocab"].as_object()? {
            let id = u32::try_from(id.as_u64()?).ok()?;
            if let Some(rest) = token.strip_prefix(prefix) {
                continuing.insert(rest.into(), id);
            }
            first.insert(token.as_str().into(), id);
        }
        let unk_id = *first.get(model["unk_token"].as_str()?)?;
        let longest = |map: &HashMap<Box<str>, u32>| map.keys().map(|k| k.len()).max().unwrap_or(0);
        let (bmp, outputs, classes) = tables(normalizer);
        let mut ascii = [NOT_ONE_BYTE; 128];
        for (b, slot) in (0u8..).zip(&mut ascii) {
            let entry = bmp[usize::from(b)];
            if entry != NOT_SIMPLE && entry & 0xff == 1 {
                let byte = outputs[(entry >> 8) as usize];
                if byte.is_ascii() {
                    *slot = byte;
                }
            }
        }
        Some(Self {
            normalizer,
            ascii,
            bmp,
            outputs,
            classes,
            max_first_bytes: longest(&first),
            max_continuing_bytes: longest(&continuing),
            first,
            continuing,
            unk_id,
            max_input_chars_per_word,
            added,
        })
    }

    /// Appends the ids of `text` (no special tokens) to `out`.
    pub fn encode(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) {
        let mut normalized = Vec::with_capacity(text.len() + text.len() / 8);
        AddedTokens::encode_around(self.added.as_ref(), text, out, |text, out| {
            self.encode_segment(text, &mut normalized, cache, out);
        });
    }

    /// Appends the ids of `text`, a segment without added tokens; `normalized` is working space.
    fn encode_segment(
        &self,
        text: &str,
        normalized: &mut Vec<u8>,
        cache: &mut Cache,
        out: &mut Vec<u32>,
    ) {
        normalized.clear();
        self.normalize(text, normalized);
        let normalized =
            std::str::from_utf8(normalized).expect("normalization appends whole characters");
        let mut lookup = cache.lookup(normalized, out, |word, out| self.word_ids(word, out));
        self.split(normalized, |piece| lookup.push(piece));
        lookup.finish();
    }

    /// Steps 1–4 over `text`, appended to `out`.
    fn normalize(&self, text: &str, out: &mut Vec<u8>) {
        let bytes = text.as_bytes();
        let mut scratch = String::new();
        let mut at = 0;
        while at < bytes.len() {
            let run = at;
            while let Some(&b) = bytes.get(at) {
                if !b.is_ascii() || self.ascii[usize::from(b)] == NOT_ONE_BYTE {
                    break;
                }
                at += 1;
            }
            out.extend(bytes[run..at].iter().map(|&b| self.ascii[usize::from(b)]));
            // A character that is not a one-byte ASCII output: a simple one from the table, or the
            // stretch up to the next simple one through the whole pipeline.
            let Some(c) = text[at..].chars().next() else {
                break;
            };
            if let Some(output) = self.simple_output(c) {
                out.extend_from_slice(output);
                at += c.len_utf8();
                continue;
            }
            let start = at;
            at += c.len_utf8();
            while let Some(c) = text[at..].chars().next() {
                if self.is_simple(c, &mut scratch) {
                    break;
                }
                at += c.len_utf8();
            }
            self.normalizer
                .normalize(&text[start..at], &mut scratch, out);
        }
    }

    /// The normalization of `c` if it is a simple BMP character.
    #[inline]
    fn simple_output(&self, c: char) -> Option<&[u8]> {
        let entry = *self.bmp.get(c as usize)?;
        (entry != NOT_SIMPLE).then(|| {
            let from = (entry >> 8) as usize;
            &self.outputs[from..from + (entry & 0xff) as usize]
        })
    }

    fn is_simple(&self, c: char, scratch: &mut String) -> bool {
        match self.bmp.get(c as usize) {
            Some(&entry) => entry != NOT_SIMPLE,
            None => self.normalizer.is_simple(c, scratch),
        }
    }

    /// Step 5: calls `piece` with each word and punctuation character of `normalized`, in order.
    fn split<'t>(&self, normalized: &'t str, mut piece: impl FnMut(&'t str)) {
        let bytes = normalized.as_bytes();
        let (mut at, mut word) = (0, 0);
        while at < bytes.len() {
            let (class, len) = if bytes[at].is_ascii() {
                (self.classes[usize::from(bytes[at])], 1)
            } else {
                let c = normalized[at..].chars().next().expect("not at the end");
                let class = match self.classes.get(c as usize) {
                    Some(&class) => class,
                    None => class_of(c),
                };
                (class, c.len_utf8())
            };
            if class != Class::Word {
                if word < at {
                    piece(&normalized[word..at]);
                }
                if class == Class::Punctuation {
                    piece(&normalized[at..at + len]);
                }
                word = at + len;
            }
            at += len;
        }
        if word < bytes.len() {
            piece(&normalized[word..]);
        }
    }

    /// Step 6: appends the ids of `word` (normalized, non-empty) to `out`.
    fn word_ids(&self, word: &str, out: &mut Vec<u32>) {
        if word.chars().nth(self.max_input_chars_per_word).is_some() {
            out.push(self.unk_id);
            return;
        }
        let from = out.len();
        let mut start = 0;
        while start < word.len() {
            let (tokens, longest) = if start == 0 {
                (&self.first, self.max_first_bytes)
            } else {
                (&self.continuing, self.max_continuing_bytes)
            };
            // Pieces longer than every token are never found: start with the longest that could be.
            let mut end = word.len().min(start + longest);
            while !word.is_char_boundary(end) {
                end -= 1;
            }
            let found = loop {
                if end <= start {
                    break None;
                }
                if let Some(&id) = tokens.get(&word[start..end]) {
                    break Some(id);
                }
                end -= word[..end].chars().next_back().map_or(1, char::len_utf8);
            };
            let Some(id) = found else {
                out.truncate(from);
                out.push(self.unk_id);
                return;
            };
            out.push(id);
            start = end;
        }
    }

    /// The normalizer's and pre-tokenizer's flags, for `tokenize.rs`'s description of the fast path.
    pub fn describe(&self) -> String {
        let n = self.normalizer;
        format!(
            "WordPiece (BertNormalizer: clean_text {}, handle_chinese_chars {}, strip_accents {}, lowercase {})",
            n.clean_text, n.handle_chinese_chars, n.strip_accents, n.lowercase
        )
    }
}

/// `WordPiece::bmp`, `WordPiece::outputs` and `WordPiece::classes`.
type Tables = (Box<[u32]>, Box<[u8]>, Box<[Class]>);

/// The BMP tables: each character's normalization if simple (entries into the returned bytes) and its
/// pre-tokenizer class.
fn tables(normalizer: BertNormalizer) -> Tables {
    let mut bmp = vec![NOT_SIMPLE; 0x1_0000];
    let mut outputs = Vec::new();
    let mut classes = vec![Class::Word; 0x1_0000];
    let (mut scratch, mut utf8) = (String::new(), [0u8; 4]);
    for (code, (entry, class)) in (0u32..).zip(bmp.iter_mut().zip(&mut classes)) {
        // Surrogates are no characters.
        let Some(c) = char::from_u32(code) else {
            continue;
        };
        *class = class_of(c);
        if normalizer.is_simple(c, &mut scratch) {
            let from = outputs.len();
            normalizer.normalize(c.encode_utf8(&mut utf8), &mut scratch, &mut outputs);
            let len = u32::try_from(outputs.len() - from).expect("a few bytes");
            *entry = u32::try_from(from).expect("under 2^24 bytes") << 8 | len;
        }
    }
    (bmp.into(), outputs.into(), classes.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uncased() -> BertNormalizer {
        BertNormalizer {
            clean_text: true,
            handle_chinese_chars: true,
            strip_accents: true,
            lowercase: true,
        }
    }

    fn normalize(normalizer: BertNormalizer, text: &str) -> String {
        let mut out = Vec::new();
        normalizer.normalize(text, &mut String::new(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_pipeline_cleans_pads_strips_and_lowercases() {
        let n = uncased();
        assert_eq!(normalize(n, "Héllo\u{200b}\0W\u{3000}x"), "hellow x");
        assert_eq!(normalize(n, "日本"), " 日  本 ");
        assert_eq!(normalize(n, "İ\u{212a}"), "ik");
        let cased = BertNormalizer {
            strip_accents: false,
            ..n
        };
        assert_eq!(normalize(cased, "İ"), "i\u{307}");
    }

    /// An encoder with `normalizer`'s flags and a one-token vocabulary.
    fn encoder(normalizer: BertNormalizer) -> WordPiece {
        let json = serde_json::json!({
            "normalizer": {"type": "BertNormalizer", "clean_text": normalizer.clean_text,
                "handle_chinese_chars": normalizer.handle_chinese_chars,
                "strip_accents": normalizer.strip_accents, "lowercase": normalizer.lowercase},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0}},
        });
        WordPiece::from_json(&json).unwrap()
    }

    /// The normalizers of all sixteen flag combinations: ours, and the `tokenizers` crate's.
    fn normalizers() -> &'static [(WordPiece, tokenizers::normalizers::BertNormalizer)] {
        static ALL: std::sync::OnceLock<Vec<(WordPiece, tokenizers::normalizers::BertNormalizer)>> =
            std::sync::OnceLock::new();
        ALL.get_or_init(|| {
            (0..16u8)
                .map(|bits| {
                    let flag = |bit: u8| bits & 1 << bit != 0;
                    let ours = BertNormalizer {
                        clean_text: flag(0),
                        handle_chinese_chars: flag(1),
                        strip_accents: flag(2),
                        lowercase: flag(3),
                    };
                    let theirs = tokenizers::normalizers::BertNormalizer::new(
                        flag(0),
                        flag(1),
                        Some(flag(2)),
                        flag(3),
                    );
                    (encoder(ours), theirs)
                })
                .collect()
        })
    }

    /// Text of the characters the normalizer treats differently: ASCII, dropped characters, whitespace,
    /// CJK, letters that decompose or lowercase to two, marks that NFD reorders (spacing ones with a
    /// class included: U+1B44 (9), U+302E (224), U+1D165 (216), U+1D16D (226), and U+1D15E, which
    /// decomposes to a starter and U+1D165).
    fn normalizer_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let pieces = prop_oneof![
            "[a-zA-Z0-9 .,]{1,4}",
            "[\u{0}\u{1}\t\n\r\u{b}\u{7f}\u{85}\u{a0}\u{ad}\u{200b}\u{3000}\u{fffd}\u{feff}\u{e000}]",
            "[\u{4e00}\u{f900}\u{2f800}\u{20000}\u{ac00}\u{1100}]",
            "[\u{c0}-\u{ff}\u{130}\u{1e69}\u{212a}\u{212b}\u{3a3}\u{1f88}\u{fb00}]",
            "[\u{300}\u{301}\u{316}\u{345}\u{5b0}\u{f71}\u{f72}\u{1b44}\u{302e}\u{1d165}\u{1d16d}\u{1d15e}\u{1d160}]{1,3}",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(pieces, 0..16).prop_map(|p| p.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn normalization_equals_the_tokenizers_crates(text in normalizer_text()) {
            use tokenizers::Normalizer;
            for (i, (ours, theirs)) in normalizers().iter().enumerate() {
                let mut out = Vec::new();
                ours.normalize(&text, &mut out);
                let mut want = tokenizers::NormalizedString::from(text.as_str());
                theirs.normalize(&mut want).unwrap();
                proptest::prop_assert_eq!(
                    String::from_utf8(out).unwrap(), want.get(), "flags {:04b} on {:?}", i, text
                );
            }
        }
    }

    #[test]
    fn simple_characters_are_starters_that_stay() {
        let n = uncased();
        let mut scratch = String::new();
        // Starters; starters and nonspacing marks (`ṩ`: s, dot below, dot above); Hangul (jamo).
        for c in ['a', ' ', '\n', 'é', '\u{1e69}', '\u{212a}', '日', '한'] {
            assert!(n.is_simple(c, &mut scratch), "{c:?}");
        }
        // A nonspacing mark alone, a spacing one with a class (U+1D165), a precomposed character with
        // one (U+1D15E), dropped characters.
        for c in [
            '\u{301}',
            '\u{1d165}',
            '\u{1d15e}',
            '\0',
            '\x7f',
            '\u{200b}',
        ] {
            assert!(!n.is_simple(c, &mut scratch), "{c:?}");
        }
    }
}
