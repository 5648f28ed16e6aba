//! DeepSeek-V3's pre-tokenizer: a `Sequence` of three `Split`s, all `Isolated` (the matches and the gaps
//! between them become pieces), each applied within every piece the one before it left (matches and
//! gaps alike), then `ByteLevel` without a regex. The three regexes are [`SPLITS`]:
//!
//! 1. `\p{N}{1,3}`: numbers, three characters at a time from the start of each run;
//! 2. `[一-龥぀-ゟ゠-ヿ]+`: runs of CJK ideographs, hiragana and katakana (U+4E00–U+9FA5, U+3040–U+309F,
//!    U+30A0–U+30FF; no character there is a number, a test checks), so the pieces are now number
//!    groups, CJK runs and runs of the other characters;
//! 3. the word pattern, within each of those pieces. A number group holds no match (every alternative
//!    needs a letter, mark, punctuation, symbol or whitespace character) and stays whole. In a CJK run it
//!    splits letters (`ー` and `ゝ` included) from punctuation (`・`, `゠`) and symbols (`゛`). In a run of
//!    other characters it is the word pattern proper, whose text ends at the next number or CJK
//!    character as at the end of the document: `\s+(?!\S)` takes a whole whitespace run there.
//!
//! `Scan::deepseek` gives the final pieces in one pass: the third split's text at `at` is the run of
//! characters of the same *kind* (CJK or not, and no number), and `Scan::word_at` reports a character
//! of another kind as the end of the text. The third split's gaps (runs of characters where no
//! alternative matches, such as control, format and unassigned characters) are pieces too. The
//! character classes are [`Classes`](super::Classes)' (read out of Oniguruma); `[\p{L}\p{M}]` is `\p{L}`
//! or both of tekken's cased classes (whose intersection is `\p{Lm}`, `\p{Lo}` and `\p{M}`), which a test
//! checks against Oniguruma.

use super::{
    CJK, LETTER, LOWER, NEWLINE, NUMBER, PUNCT_OR_SYMBOL, SPACE, Scan, UPPER, not_ascii_letters,
};

/// The regexes of DeepSeek-V3's three `Split`s, as its `tokenizer.json` spells them (JSON unescaped). The
/// third's `[^\r\n…]`, `[\r\n]*` and `[\r\n]+` hold literal CR and LF characters, not escapes.
pub const SPLITS: [&str; 3] = [
    r"\p{N}{1,3}",
    "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
    concat!(
        r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^"##,
        "\r\n",
        r"\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[",
        "\r\n",
        r"]*|\s*[",
        "\r\n",
        r"]+|\s+(?!\S)|\s+",
    ),
];

/// `[\p{L}\p{M}]`.
#[inline]
fn is_letter_or_mark(class: u8) -> bool {
    class & LETTER != 0 || class & (UPPER | LOWER) == UPPER | LOWER
}

// As the other scanners, the steps are forced inline (see `pretok.rs`).
#[allow(clippy::inline_always)]
impl Scan<'_> {
    /// The end of the piece at `at`.
    #[inline(always)]
    pub(super) fn deepseek(&self, at: usize) -> usize {
        let (class, len) = self.at(at);
        // \p{N}{1,3}
        if class & NUMBER != 0 {
            let mut end = at + len;
            for _ in 1..3 {
                let (class, len) = self.at(end);
                if class & NUMBER == 0 {
                    break;
                }
                end += len;
            }
            return end;
        }
        // The third split within the CJK run or the run of other characters at `at`.
        let kind = class & CJK;
        self.word(at, kind)
            .unwrap_or_else(|| self.gap(at + len, kind))
    }

    /// The class and length of the character at `at` as the third split sees it in a text of `kind`
    /// (`CJK` or 0): `(0, 0)` at the end of that text, which is the end of the document, a number or a
    /// character of the other kind.
    #[inline(always)]
    fn word_at(&self, at: usize, kind: u8) -> (u8, usize) {
        let (class, len) = self.at(at);
        if class & (NUMBER | CJK) == kind {
            (class, len)
        } else {
            (0, 0)
        }
    }

    /// The end of the run from `at` of the characters of a text of `kind` whose class `keep` accepts.
    #[inline(always)]
    fn word_run(&self, mut at: usize, kind: u8, keep: impl Fn(u8) -> bool) -> usize {
        loop {
            let (class, len) = self.word_at(at, kind);
            if len == 0 || !keep(class) {
                return at;
            }
            at += len;
        }
    }

    /// The end of the match of the third split's pattern at `at`, in a text of `kind`, if one starts
    /// there.
    #[inline(always)]
    fn word(&self, at: usize, kind: u8) -> Option<usize> {
        let first = self.bytes[at];
        // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+ (ASCII's 32 punctuation characters, none CJK)
        if first.is_ascii_punctuation()
            && self.bytes.get(at + 1).is_some_and(u8::is_ascii_alphabetic)
        {
            return Some(self.ascii_letters(at + 2));
        }
        let (class, len) = self.word_at(at, kind);
        // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+: with the optional character if a letter or mark follows
        // it, else from `at` (the two give the same end where `at` holds a mark, in both branches).
        if class & (NEWLINE | LETTER | PUNCT_OR_SYMBOL) == 0
            && is_letter_or_mark(self.word_at(at + len, kind).0)
        {
            return Some(self.letters_or_marks(at + len, kind));
        }
        if is_letter_or_mark(class) {
            return Some(self.letters_or_marks(at, kind));
        }
        // ` ?[\p{P}\p{S}]+[\r\n]*` (a space is neither, so without the space it cannot match there;
        // spaces and line breaks are not CJK)
        let from = if first == b' ' { at + 1 } else { at };
        if self.word_at(from, kind).0 & PUNCT_OR_SYMBOL != 0 {
            let mut end = self.word_run(from, kind, |c| c & PUNCT_OR_SYMBOL != 0);
            while kind == 0 && matches!(self.bytes.get(end), Some(b'\r' | b'\n')) {
                end += 1;
            }
            return Some(end);
        }
        (class & SPACE != 0).then(|| self.word_spaces(at, kind))
    }

    /// `\s*[\r\n]+|\s+(?!\S)|\s+` at the whitespace at `at`: up to the run's last `\r` or `\n` if it has
    /// one; otherwise the run, less its last character when a non-space of the same text follows and
    /// the run has more than one.
    fn word_spaces(&self, at: usize, kind: u8) -> usize {
        let (mut end, mut last) = (at, at);
        let mut newline_end = None;
        let at_text_end = loop {
            let (class, len) = self.word_at(end, kind);
            if len == 0 || class & SPACE == 0 {
                break len == 0;
            }
            last = end;
            end += len;
            if class & NEWLINE != 0 {
                newline_end = Some(end);
            }
        };
        newline_end.unwrap_or(if at_text_end || last == at { end } else { last })
    }

    /// The end of the run of `[\p{L}\p{M}]` from `at` (which starts one) in a text of `kind`: outside CJK,
    /// ASCII letters eight bytes at a time; other characters one by one.
    #[inline(always)]
    fn letters_or_marks(&self, mut at: usize, kind: u8) -> usize {
        loop {
            if kind == 0 {
                at = self.ascii_letters(at);
            }
            let (class, len) = self.word_at(at, kind);
            if len == 0 || !is_letter_or_mark(class) {
                return at;
            }
            at += len;
        }
    }

    /// The end of the run of ASCII letters from `at`.
    #[inline(always)]
    fn ascii_letters(&self, mut at: usize) -> usize {
        while let Some(chunk) = self.bytes.get(at..at + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let others = not_ascii_letters(u64::from_le_bytes(word));
            if others != 0 {
                return at + (others.trailing_zeros() / 8) as usize;
            }
            at += 8;
        }
        while self.bytes.get(at).is_some_and(u8::is_ascii_alphabetic) {
            at += 1;
        }
        at
    }

    /// The end of the third split's gap (in a text of `kind`) whose second character is at `at`: the
    /// characters up to the next match or the end of the text.
    #[inline(never)]
    fn gap(&self, mut at: usize, kind: u8) -> usize {
        loop {
            let (_, len) = self.word_at(at, kind);
            if len == 0 || self.word(at, kind).is_some() {
                return at;
            }
            at += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokenizers::utils::SysRegex;

    use super::super::{Classes, Pattern};
    use super::*;

    /// The pieces of `text` by the `tokenizers` crate's own pre-tokenizer, built from `SPLITS`.
    fn reference(text: &str) -> Vec<String> {
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        static SEQUENCE: std::sync::OnceLock<Sequence> = std::sync::OnceLock::new();
        let sequence = SEQUENCE.get_or_init(|| {
            let splits = SPLITS
                .iter()
                .map(|regex| {
                    Split::new(
                        SplitPattern::Regex((*regex).to_owned()),
                        tokenizers::SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .unwrap()
                    .into()
                })
                .collect();
            Sequence::new(splits)
        });
        let mut pretokenized = PreTokenizedString::from(text);
        sequence.pre_tokenize(&mut pretokenized).unwrap();
        pretokenized
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_owned())
            .collect()
    }

    fn pieces(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        Pattern::DeepSeek.split(text, |p| out.push(p.to_owned()));
        out
    }

    #[test]
    fn the_sequence_splits_as_the_tokenizers_crate_does_on_edge_cases() {
        let texts = [
            "Hello world's  end\n\n  x",
            "1234567 a12b 12,345.6789 ١٢٣٤٥ Ⅻ½",
            "日本語のテキスト、カタカナ・ひらがな゛゜ー一龥龦\u{3040}\u{309f}\u{30a0}\u{30ff}\u{4dff}\u{3100}",
            "  日本  1  x  \n 中",
            "(hello) .com 'S don't «ok» (é) $5 +x ~~y",
            "a\u{301}b \u{301}x \u{301}\u{302} \u{200b}\u{200b}a \u{0}\u{0}b\u{7f}",
            "!!\n\r\n x \t\ty \r\r\n",
            " ",
            "\n",
            "",
            "   ",
            "x  \n  y",
            "𝐀𝐛 \u{e0100}a \u{feff}",
            "ア・\n゛\r\nイ゠ \n",
            "中文,English 日本2024年 「こんにちは」 ア\r\nイ ゝゞヽヾ\u{3097}\u{3097}あ 中 \u{3099}x",
        ];
        for text in texts {
            assert_eq!(pieces(text), reference(text), "{text:?}");
        }
    }

    #[test]
    fn letters_or_marks_and_the_added_classes_are_onigurumas() {
        let classes = Classes::get();
        let every: String = (0..0x11_0000u32).filter_map(char::from_u32).collect();
        for (regex, is_in) in [
            (r"[\p{L}\p{M}]+", is_letter_or_mark as fn(u8) -> bool),
            (r"[\p{P}\p{S}]+", |class| class & PUNCT_OR_SYMBOL != 0),
            (SPLITS[1], |class| class & CJK != 0),
            (r"[^\s\S]", |class| class & (CJK | NUMBER) == CJK | NUMBER),
        ] {
            let mut expected = vec![false; 0x11_0000];
            for (start, end) in SysRegex::new(regex).unwrap().find_iter(&every) {
                for c in every[start..end].chars() {
                    expected[c as usize] = true;
                }
            }
            for c in every.chars() {
                assert_eq!(
                    is_in(classes.table[c as usize]),
                    expected[c as usize],
                    "{regex} on U+{:04X}",
                    c as u32
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// Texts of the characters each branch turns on: ASCII letters, digits and punctuation, spaces and
        /// line breaks, a letter and a mark, the CJK ranges' edges with their letters, punctuation and
        /// symbols, other numbers, other whitespace, a format and a control character (gaps).
        #[test]
        fn random_texts_split_as_the_tokenizers_crate_does(
            text in "[aZ0-9 \n\r\t!'(.:`~\u{e9}\u{301}\u{4dff}\u{4e00}\u{9fa5}\u{9fa6}\u{3040}\u{3041}\u{309b}\u{309f}\u{30a0}\u{30fb}\u{30fc}\u{30ff}\u{3100}\u{3002}\u{660}\u{bd}\u{2160}\u{200b}\u{0}\u{a0}\u{3000}\u{ab}\u{20ac}]{0,24}"
        ) {
            proptest::prop_assert_eq!(pieces(&text), reference(&text));
        }
    }
}
