//! The cached path's own normalizers and pre-tokenizers: the crate's, on `&str`, without its alignments.
//!
//! [`Native`] takes a tokenizer whose every normalizer and pre-tokenizer (sequences flattened) is one of
//! these, and gives the strings the crate's `extract_and_normalize` and pre-tokenizer give the model, in
//! their order (offsets are not kept: the model sees only the strings):
//!
//! * normalizers `NFC`, `NFKC` (text their quick check passes is left as it is), `Lowercase` (each
//!   character's own lowercase, as the crate's: no final sigma), `Strip` (`char::is_whitespace`),
//!   `Replace` with a non-empty string pattern, `Prepend` (not on an empty string), `Precompiled`
//!   (SentencePiece's character map, grapheme by grapheme, through the crate's own map);
//! * pre-tokenizers `Metaspace` (every `prepend_scheme`, `split` or not), `WhitespaceSplit`, `Whitespace`
//!   (`\w+|[^\w\s]+`, `\w` the `regex` crate's), `Digits` (`char::is_numeric`, one by one or in runs),
//!   `Punctuation` (ASCII or Unicode `P*`, as the crate's `is_punc`, every split behavior), `ByteLevel`
//!   (a space put in front of a piece without one where `add_prefix_space`, GPT-2's split by
//!   [`Pattern::Gpt2`] where `use_regex`, then each byte as GPT-2's character for it).
//!
//! Anything else (`NFD`, `NFKD`, `BertNormalizer`, a regex `Replace`, `Split`,
//! `BertPreTokenizer`, …) and one case this module does not follow makes [`Native::new`] decline, and
//! the cached path keeps the crate's components: `Metaspace` with `prepend_scheme: first` anywhere but
//! first among the pre-tokenizers, or after a `Replace` or `Precompiled`. `first` prepends to a piece
//! whose first character comes from the document's first byte; the crate reads that from its
//! alignments, which a `Replace`, a `Precompiled` map or an earlier split can move (a `Replace` gives its
//! content the alignment of the match's last character).

use std::borrow::Cow;
use std::sync::OnceLock;

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::{IsNormalized, UnicodeNormalization};
use unicode_segmentation::UnicodeSegmentation;

use crate::byte_bpe::byte_chars;
use crate::pretok::Pattern;

/// A normalizer step.
#[derive(Debug)]
enum Normalize {
    Nfc,
    Nfkc,
    Lowercase,
    Strip { left: bool, right: bool },
    Replace { pattern: String, content: String },
    Prepend(String),
    Precompiled(Box<CharMap>),
}

/// Where `Metaspace` puts its replacement before a piece that does not start with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrependScheme {
    Always,
    First,
    Never,
}

/// What a split does with the characters it splits on (the crate's `SplitDelimiterBehavior`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

/// A pre-tokenizer step.
#[derive(Debug)]
enum PreTokenize {
    Metaspace {
        replacement: char,
        scheme: PrependScheme,
        split: bool,
    },
    WhitespaceSplit,
    Whitespace,
    Digits {
        individual: bool,
    },
    Punctuation(Behavior),
    ByteLevel {
        add_prefix_space: bool,
        use_regex: bool,
    },
}

/// A tokenizer's normalizer and pre-tokenizer, where every step of both is one this module has.
#[derive(Debug)]
pub struct Native {
    normalizers: Vec<Normalize>,
    pre_tokenizers: Vec<PreTokenize>,
}

/// Buffers one thread reuses from section to section.
#[derive(Debug, Default)]
pub struct Scratch {
    pieces: Vec<(usize, usize)>,
    next: Vec<(usize, usize)>,
    text: String,
    rewritten: String,
}

impl Native {
    /// The native steps of `normalizer` and `pre_tokenizer`, or `None` if one of them is not covered.
    pub fn new(
        normalizer: Option<&NormalizerWrapper>,
        pre_tokenizer: Option<&PreTokenizerWrapper>,
    ) -> Option<Self> {
        let mut normalizers = Vec::new();
        if let Some(normalizer) = normalizer {
            flatten_normalizer(normalizer, &mut normalizers)?;
        }
        let mut pre_tokenizers = Vec::new();
        if let Some(pre_tokenizer) = pre_tokenizer {
            flatten_pre_tokenizer(
                &serde_json::to_value(pre_tokenizer).ok()?,
                &mut pre_tokenizers,
            )?;
        }
        let has_replace = normalizers
            .iter()
            .any(|n| matches!(n, Normalize::Replace { .. } | Normalize::Precompiled(_)));
        let first_elsewhere = pre_tokenizers.iter().enumerate().any(|(i, p)| {
            matches!(
                p,
                PreTokenize::Metaspace {
                    scheme: PrependScheme::First,
                    ..
                }
            ) && (i > 0 || has_replace)
        });
        (!first_elsewhere).then_some(Self {
            normalizers,
            pre_tokenizers,
        })
    }

    /// Calls `piece` with each pre-token of `section` (text between added tokens), in order.
    /// `at_start` says whether the section starts at the document's first byte.
    pub fn pre_tokenize(
        &self,
        section: &str,
        at_start: bool,
        scratch: &mut Scratch,
        mut piece: impl FnMut(&str),
    ) {
        let (normalized, at_start) = self.normalize(section, at_start);
        if normalized.is_empty() {
            return;
        }
        let Scratch {
            pieces,
            next,
            text,
            rewritten,
        } = scratch;
        text.clear();
        text.push_str(&normalized);
        pieces.clear();
        pieces.push((0, text.len()));
        for step in &self.pre_tokenizers {
            next.clear();
            match *step {
                PreTokenize::Metaspace { .. } | PreTokenize::ByteLevel { .. } => {
                    rewritten.clear();
                    for &(start, end) in pieces.iter() {
                        step.rewrite(&text[start..end], at_start, rewritten, next);
                    }
                    std::mem::swap(text, rewritten);
                }
                _ => {
                    for &(start, end) in pieces.iter() {
                        step.split(&text[start..end], &mut |a, b| {
                            next.push((start + a, start + b));
                        });
                    }
                }
            }
            std::mem::swap(pieces, next);
        }
        for &(start, end) in pieces.iter() {
            piece(&text[start..end]);
        }
    }

    /// `section` normalized, and whether its first character still comes from the document's first byte.
    fn normalize<'t>(&self, section: &'t str, mut at_start: bool) -> (Cow<'t, str>, bool) {
        let mut text = Cow::Borrowed(section);
        for step in &self.normalizers {
            let next = match step {
                Normalize::Nfc => (unicode_normalization_alignments::is_nfc_quick(text.chars())
                    != IsNormalized::Yes)
                    .then(|| text.nfc().map(|(c, _)| c).collect()),
                Normalize::Nfkc => (unicode_normalization_alignments::is_nfkc_quick(text.chars())
                    != IsNormalized::Yes)
                    .then(|| text.nfkc().map(|(c, _)| c).collect()),
                Normalize::Lowercase => lowercase(&text),
                Normalize::Strip { left, right } => {
                    let mut kept: &str = &text;
                    if *left {
                        kept = kept.trim_start_matches(char::is_whitespace);
                        at_start &= kept.len() == text.len();
                    }
                    if *right {
                        kept = kept.trim_end_matches(char::is_whitespace);
                    }
                    (kept.len() != text.len()).then(|| kept.to_owned())
                }
                Normalize::Replace { pattern, content } => text
                    .contains(pattern.as_str())
                    .then(|| text.replace(pattern.as_str(), content)),
                Normalize::Prepend(prefix) => (!text.is_empty()).then(|| format!("{prefix}{text}")),
                Normalize::Precompiled(map) => map.normalize(&text),
            };
            if let Some(next) = next {
                text = Cow::Owned(next);
            }
        }
        (text, at_start)
    }
}

/// Each character's own lowercase (the crate's `NormalizedString::lowercase`), if that changes `text`.
fn lowercase(text: &str) -> Option<String> {
    if text.is_ascii() {
        return text
            .bytes()
            .any(|b| b.is_ascii_uppercase())
            .then(|| text.to_ascii_lowercase());
    }
    let lower: String = text.chars().flat_map(char::to_lowercase).collect();
    (lower != text).then_some(lower)
}

/// SentencePiece's character map (the crate's `Precompiled`), with what it gives each ASCII character
/// looked up once.
#[derive(Debug)]
struct CharMap {
    map: Precompiled,
    ascii: Vec<Option<String>>,
}

impl CharMap {
    fn new(map: Precompiled) -> Self {
        let ascii = (0..128u8)
            .map(|b| map.transform(&char::from(b).to_string()).map(str::to_owned))
            .collect();
        Self { map, ascii }
    }

    /// The crate's `Precompiled` normalizer (`normalizers/precompiled.rs`), if it changes `text`: each
    /// grapheme shorter than 6 bytes as the map has it, else (or where the map lacks it) each of its
    /// characters as the map has it or as it is.
    ///
    /// Between two ASCII characters there is always a grapheme boundary but inside `\r\n` (Unicode's
    /// GB3 to GB5, and no rule looks back past an ASCII character), so an ASCII character followed by one
    /// is a grapheme of its own, read from the table; the rest goes through the grapheme segmenter, cut
    /// at such boundaries.
    fn normalize(&self, text: &str) -> Option<String> {
        let bytes = text.as_bytes();
        let is_cut = |at: usize| {
            at == bytes.len()
                || bytes[at].is_ascii()
                    && bytes[at - 1].is_ascii()
                    && (bytes[at - 1], bytes[at]) != (b'\r', b'\n')
        };
        let mut out = String::with_capacity(text.len());
        let mut is_modified = false;
        let mut at = 0;
        while at < bytes.len() {
            // A cut right after `at` (a character's first byte) makes that character ASCII.
            if is_cut(at + 1) {
                match &self.ascii[usize::from(bytes[at])] {
                    Some(normalized) => {
                        is_modified = true;
                        out.push_str(normalized);
                    }
                    None => out.push(char::from(bytes[at])),
                }
                at += 1;
                continue;
            }
            let end = (at + 2..=bytes.len())
                .find(|&end| is_cut(end))
                .expect("the end is a cut");
            is_modified |= self.normalize_graphemes(&text[at..end], &mut out);
            at = end;
        }
        is_modified.then_some(out)
    }

    /// [`CharMap::normalize`] of `text` (which starts and ends at grapheme boundaries) onto `out`;
    /// whether the map changed anything.
    fn normalize_graphemes(&self, text: &str, out: &mut String) -> bool {
        let mut is_modified = false;
        for grapheme in text.graphemes(true) {
            if grapheme.len() < 6
                && let Some(normalized) = self.map.transform(grapheme)
            {
                is_modified = true;
                out.push_str(normalized);
                continue;
            }
            for (i, c) in grapheme.char_indices() {
                match self.map.transform(&grapheme[i..i + c.len_utf8()]) {
                    Some(normalized) => {
                        is_modified = true;
                        out.push_str(normalized);
                    }
                    None => out.push(c),
                }
            }
        }
        is_modified
    }
}

/// `Metaspace` on one piece: spaces become `replacement`, which is put in front where asked and missing;
/// the rewritten piece is appended to `out` and its pieces' ranges in `out` to `pieces`.
fn metaspace(
    piece: &str,
    replacement: char,
    prepend: bool,
    split: bool,
    out: &mut String,
    pieces: &mut Vec<(usize, usize)>,
) {
    let start = out.len();
    if prepend && !piece.starts_with([' ', replacement]) {
        out.push(replacement);
    }
    for c in piece.chars() {
        out.push(if c == ' ' { replacement } else { c });
    }
    if !split {
        pieces.push((start, out.len()));
        return;
    }
    // Merged with the next piece: a cut before every replacement character.
    let mut from = start;
    for (i, c) in out[start..].char_indices() {
        if c == replacement && start + i > from {
            pieces.push((from, start + i));
            from = start + i;
        }
    }
    if out.len() > from {
        pieces.push((from, out.len()));
    }
}

/// `ByteLevel` on one piece: a space in front if `add_prefix_space` and it has none, cut by GPT-2's
/// pattern if `use_regex`, each byte of each part written as GPT-2's character for it to `out` and the
/// parts' ranges in `out` appended to `pieces`.
fn byte_level(
    piece: &str,
    add_prefix_space: bool,
    use_regex: bool,
    out: &mut String,
    pieces: &mut Vec<(usize, usize)>,
) {
    static CHARS: OnceLock<[char; 256]> = OnceLock::new();
    let chars = CHARS.get_or_init(byte_chars);
    let mut emit = |part: &str| {
        let start = out.len();
        out.extend(part.bytes().map(|b| chars[usize::from(b)]));
        pieces.push((start, out.len()));
    };
    let piece: Cow<'_, str> = if add_prefix_space && !piece.starts_with(' ') {
        Cow::Owned(format!(" {piece}"))
    } else {
        Cow::Borrowed(piece)
    };
    if use_regex {
        Pattern::Gpt2.split(&piece, emit);
    } else {
        emit(&piece);
    }
}

impl PreTokenize {
    /// `Metaspace` or `ByteLevel` on `piece` (`at_start`: whether the section starts at the document's
    /// first byte): the rewritten piece appended to `out`, its pieces' ranges in `out` to `pieces`.
    fn rewrite(
        &self,
        piece: &str,
        at_start: bool,
        out: &mut String,
        pieces: &mut Vec<(usize, usize)>,
    ) {
        match *self {
            Self::Metaspace {
                replacement,
                scheme,
                split,
            } => {
                let prepend = match scheme {
                    PrependScheme::Always => true,
                    PrependScheme::First => at_start,
                    PrependScheme::Never => false,
                };
                metaspace(piece, replacement, prepend, split, out, pieces);
            }
            Self::ByteLevel {
                add_prefix_space,
                use_regex,
            } => byte_level(piece, add_prefix_space, use_regex, out, pieces),
            _ => unreachable!("only Metaspace and ByteLevel rewrite their pieces"),
        }
    }

    /// The byte ranges of `piece`'s pieces, for the steps that only split (not `Metaspace` or
    /// `ByteLevel`).
    fn split(&self, piece: &str, emit: &mut impl FnMut(usize, usize)) {
        match *self {
            Self::WhitespaceSplit => split_on(piece, char::is_whitespace, Behavior::Removed, emit),
            Self::Whitespace => split_words(piece, emit),
            Self::Digits { individual: true } => {
                split_on(piece, char::is_numeric, Behavior::Isolated, emit);
            }
            Self::Digits { individual: false } => {
                split_on(piece, char::is_numeric, Behavior::Contiguous, emit);
            }
            Self::Punctuation(behavior) => split_on(piece, is_punctuation, behavior, emit),
            Self::Metaspace { .. } | Self::ByteLevel { .. } => {
                unreachable!("Metaspace and ByteLevel rewrite their pieces")
            }
        }
    }
}

/// The crate's `is_punc` (`pre_tokenizers/punctuation.rs`): ASCII punctuation or Unicode `P*`. The
/// ASCII characters in `P*` are ASCII punctuation, so an ASCII character needs no table search, and the
/// rest of the Basic Multilingual Plane (where `Metaspace`'s `▁` is) is read from a bit set of the
/// category tables' answers, made once.
fn is_punctuation(c: char) -> bool {
    static BMP: std::sync::OnceLock<Box<[u64]>> = std::sync::OnceLock::new();
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    let Ok(index) = u16::try_from(u32::from(c)) else {
        return c.is_punctuation();
    };
    let bits = BMP.get_or_init(|| {
        let mut bits = vec![0u64; 1 << 10];
        for c in (0..=u32::from(u16::MAX)).filter_map(char::from_u32) {
            if c.is_punctuation() {
                bits[usize::try_from(u32::from(c) >> 6).expect("under 1024")] |=
                    1 << (u32::from(c) & 63);
            }
        }
        bits.into()
    });
    bits[usize::from(index >> 6)] >> (index & 63) & 1 == 1
}

/// The crate's `NormalizedString::split` with a character predicate: every matching character is a
/// delimiter of its own, and `behavior` says where the cuts are around it. Empty pieces are dropped.
fn split_on(
    piece: &str,
    is_match: impl Fn(char) -> bool,
    behavior: Behavior,
    emit: &mut impl FnMut(usize, usize),
) {
    let mut from = 0;
    let mut previous = None;
    for (i, c) in piece.char_indices() {
        let matched = is_match(c);
        let cut_before = match behavior {
            Behavior::Removed | Behavior::Isolated => matched || previous == Some(true),
            Behavior::Contiguous => previous.is_some_and(|p| p != matched),
            Behavior::MergedWithPrevious => previous == Some(true),
            Behavior::MergedWithNext => matched,
        };
        if cut_before {
            if i > from {
                emit(from, i);
            }
            from = i;
        }
        if matched && behavior == Behavior::Removed {
            from = i + c.len_utf8();
        }
        previous = Some(matched);
    }
    if piece.len() > from {
        emit(from, piece.len());
    }
}

/// The crate's `Whitespace`: the matches of `\w+|[^\w\s]+`, runs of word characters and runs of
/// characters that are neither word characters nor whitespace.
fn split_words(piece: &str, emit: &mut impl FnMut(usize, usize)) {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Class {
        Word,
        Space,
        Other,
    }
    let class = |c: char| {
        if regex_syntax::is_word_character(c) {
            Class::Word
        } else if c.is_whitespace() {
            Class::Space
        } else {
            Class::Other
        }
    };
    let mut run: Option<(usize, Class)> = None;
    for (i, c) in piece.char_indices() {
        let this = class(c);
        match run {
            Some((_, open)) if open == this => continue,
            Some((from, open)) if open != Class::Space => emit(from, i),
            _ => {}
        }
        run = Some((i, this));
    }
    if let Some((from, open)) = run
        && open != Class::Space
    {
        emit(from, piece.len());
    }
}

/// Appends the native steps of `normalizer` to `steps`; `None` if one is not covered.
fn flatten_normalizer(normalizer: &NormalizerWrapper, steps: &mut Vec<Normalize>) -> Option<()> {
    match normalizer {
        NormalizerWrapper::Sequence(sequence) => {
            for member in sequence.as_ref() {
                flatten_normalizer(member, steps)?;
            }
        }
        NormalizerWrapper::Precompiled(map) => {
            steps.push(Normalize::Precompiled(Box::new(CharMap::new(map.clone()))));
        }
        other => steps.push(normalizer_step(&serde_json::to_value(other).ok()?)?),
    }
    Some(())
}

/// A normalizer's native step from the crate's serialization of it, if there is one.
fn normalizer_step(json: &serde_json::Value) -> Option<Normalize> {
    let step = match json["type"].as_str()? {
        "NFC" => Normalize::Nfc,
        "NFKC" => Normalize::Nfkc,
        "Lowercase" => Normalize::Lowercase,
        "Strip" => Normalize::Strip {
            left: json["strip_left"].as_bool()?,
            right: json["strip_right"].as_bool()?,
        },
        "Replace" => {
            let pattern = json["pattern"]["String"].as_str()?;
            if pattern.is_empty() {
                return None;
            }
            Normalize::Replace {
                pattern: pattern.to_owned(),
                content: json["content"].as_str()?.to_owned(),
            }
        }
        "Prepend" => Normalize::Prepend(json["prepend"].as_str()?.to_owned()),
        _ => return None,
    };
    Some(step)
}

/// Appends the native steps of a pre-tokenizer (as the crate serializes it) to `steps`; `None` if one
/// is not covered.
fn flatten_pre_tokenizer(json: &serde_json::Value, steps: &mut Vec<PreTokenize>) -> Option<()> {
    let step = match json["type"].as_str()? {
        "Sequence" => {
            for member in json["pretokenizers"].as_array()? {
                flatten_pre_tokenizer(member, steps)?;
            }
            return Some(());
        }
        "Metaspace" => {
            let mut replacement = json["replacement"].as_str()?.chars();
            let scheme = match json["prepend_scheme"].as_str()? {
                "always" => PrependScheme::Always,
                "first" => PrependScheme::First,
                "never" => PrependScheme::Never,
                _ => return None,
            };
            let step = PreTokenize::Metaspace {
                replacement: replacement.next()?,
                scheme,
                split: json["split"].as_bool()?,
            };
            if replacement.next().is_some() {
                return None;
            }
            step
        }
        "ByteLevel" => PreTokenize::ByteLevel {
            add_prefix_space: json["add_prefix_space"].as_bool()?,
            use_regex: json["use_regex"].as_bool()?,
        },
        "WhitespaceSplit" => PreTokenize::WhitespaceSplit,
        "Whitespace" => PreTokenize::Whitespace,
        "Digits" => PreTokenize::Digits {
            individual: json["individual_digits"].as_bool()?,
        },
        "Punctuation" => PreTokenize::Punctuation(match json["behavior"].as_str()? {
            "Removed" => Behavior::Removed,
            "Isolated" => Behavior::Isolated,
            "MergedWithPrevious" => Behavior::MergedWithPrevious,
            "MergedWithNext" => Behavior::MergedWithNext,
            "Contiguous" => Behavior::Contiguous,
            _ => return None,
        }),
        _ => return None,
    };
    steps.push(step);
    Some(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use tokenizers::{NormalizedString, SplitDelimiterBehavior};

    use super::*;

    /// The ASCII shortcut gives the crate's `is_punc` on every character.
    #[test]
    fn is_punctuation_is_the_crates() {
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            let crate_is_punc = c.is_ascii_punctuation() || c.is_punctuation();
            assert_eq!(is_punctuation(c), crate_is_punc, "{c:?}");
        }
    }

    /// Every behavior cuts where the crate's `NormalizedString::split` does with the same predicate.
    #[test]
    fn split_on_cuts_as_the_crate_splits() {
        let behaviors = [
            (Behavior::Removed, SplitDelimiterBehavior::Removed),
            (Behavior::Isolated, SplitDelimiterBehavior::Isolated),
            (
                Behavior::MergedWithPrevious,
                SplitDelimiterBehavior::MergedWithPrevious,
            ),
            (
                Behavior::MergedWithNext,
                SplitDelimiterBehavior::MergedWithNext,
            ),
            (Behavior::Contiguous, SplitDelimiterBehavior::Contiguous),
        ];
        let texts = [
            "Hey friend!     How are you?!?",
            "!!a!b!",
            "",
            "!",
            "ab",
            "a!!",
        ];
        for (ours, theirs) in behaviors {
            for text in texts {
                let mut got = Vec::new();
                split_on(text, is_punctuation, ours, &mut |a, b| {
                    got.push(&text[a..b]);
                });
                let want: Vec<String> = NormalizedString::from(text)
                    .split(is_punctuation, theirs)
                    .unwrap()
                    .iter()
                    .filter(|piece| !piece.is_empty())
                    .map(|piece| piece.get().to_owned())
                    .collect();
                assert_eq!(got, want, "{ours:?} on {text:?}");
            }
        }
    }
}
