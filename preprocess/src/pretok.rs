//! Hand-written scanners for the split regexes of byte-level BPE tokenizers, giving exactly the pieces
//! that Oniguruma (the `tokenizers` crate's regex engine) finds with the pattern.
//!
//! Five families are implemented, recognised by their exact pattern text ([`Pattern::from_regex`]):
//! GPT-2's (also the `ByteLevel` pre-tokenizer's own), cl100k / Llama-3's (`\p{N}{1,3}`) with its
//! Qwen-2 variant (`\p{N}`), tekken's (cased letter classes), and o200k's (GPT-4o, gpt-oss: tekken's
//! letter runs, each followed by an optional contraction, and cl100k's digits), plus DeepSeek-V3's
//! sequence of three splits ([`deepseek`]); any other split regex goes to the slower general engine,
//! [`general`]. Each alternative of the pattern is a branch below, tried in the pattern's order; the
//! comments give the alternative. The backtracking of a regex engine reduces to a few closed forms,
//! derived at each branch.
//!
//! The Unicode classes (`\p{L}`, `\p{N}`, `\s`, the cased classes, and which characters `(?i)` folds
//! onto the letters of `'s 't 're 've 'm 'll 'd`) are not taken from a Unicode table of their own: they
//! are read once per process out of the same Oniguruma build, by running each class over every code
//! point ([`Classes::get`]), so that the scanner and the reference can never disagree on a character.

use std::sync::OnceLock;

use rustc_hash::FxHashMap as HashMap;
use tokenizers::utils::SysRegex;

pub mod deepseek;
pub mod general;

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;
/// tekken's `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`.
const UPPER: u8 = 8;
/// tekken's `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`.
const LOWER: u8 = 16;
/// `\r` or `\n`.
const NEWLINE: u8 = 32;
/// `[\p{P}\p{S}]` (DeepSeek-V3).
const PUNCT_OR_SYMBOL: u8 = 64;
/// DeepSeek-V3's CJK ranges, `[一-龥぀-ゟ゠-ヿ]`.
const CJK: u8 = 128;

/// The GPT-2 pattern, which `ByteLevel { use_regex: true }` applies.
pub const GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// cl100k_base's and Llama-3's pattern.
pub const CL100K: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen-2's pattern: cl100k's with single digits.
pub const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// tekken's pattern.
pub const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// o200k's pattern (GPT-4o, gpt-oss): tekken's letter branches each followed by an optional
/// case-insensitive contraction, and up to three digits per piece.
pub const O200K: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A split pattern this module scans by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// [`GPT2`].
    Gpt2,
    /// [`CL100K`] (`max_digits` 3) or [`QWEN2`] (`max_digits` 1).
    Cl100k {
        /// Digits per piece at most.
        max_digits: usize,
    },
    /// [`TEKKEN`].
    Tekken,
    /// [`O200K`].
    O200k,
    /// DeepSeek-V3's sequence of three splits, [`deepseek::SPLITS`].
    DeepSeek,
}

impl Pattern {
    /// The scanner for `regex`, if it is one of the patterns above, character for character.
    pub fn from_regex(regex: &str) -> Option<Self> {
        match regex {
            GPT2 => Some(Self::Gpt2),
            CL100K => Some(Self::Cl100k { max_digits: 3 }),
            QWEN2 => Some(Self::Cl100k { max_digits: 1 }),
            TEKKEN => Some(Self::Tekken),
            O200K => Some(Self::O200k),
            _ => None,
        }
    }

    /// Calls `piece` with each piece of `text`, in order; the pieces cover `text`.
    pub fn split<'t>(self, text: &'t str, mut piece: impl FnMut(&'t str)) {
        let scan = Scan {
            text,
            bytes: text.as_bytes(),
            classes: Classes::get(),
        };
        let mut at = 0;
        while at < text.len() {
            let end = match self {
                Self::Gpt2 => scan.gpt2(at),
                Self::Cl100k { max_digits } => scan.cl100k(at, max_digits),
                Self::Tekken => scan.tekken(at),
                Self::O200k => scan.o200k(at),
                Self::DeepSeek => scan.deepseek(at),
            };
            debug_assert!(end > at, "every character starts a match");
            piece(&text[at..end]);
            at = end;
        }
    }
}

/// Character classes and case folds, as Oniguruma has them.
#[derive(Debug)]
pub struct Classes {
    /// Class bits per code point.
    table: Box<[u8]>,
    /// The first 128 of them, where most text is.
    ascii: [u8; 128],
    /// Characters other than the ASCII letters that `(?i)` matches to one of `s t r e v m l d`.
    folds: HashMap<char, u8>,
}

impl Classes {
    /// The classes, computed on first use (about a tenth of a second) and shared.
    pub fn get() -> &'static Self {
        static CLASSES: OnceLock<Classes> = OnceLock::new();
        CLASSES.get_or_init(Self::from_oniguruma)
    }

    fn from_oniguruma() -> Self {
        Self::over(&Self::ASSIGNED)
    }

    /// The planes that hold characters of the classes above: 0 to 3, and 14's variation selectors
    /// (marks). Planes 4 to 13 are unassigned and 15 and 16 private use; a test checks them all.
    const ASSIGNED: [std::ops::Range<u32>; 2] = [0..0x4_0000, 0xE_0000..0xE_1000];

    fn over(ranges: &[std::ops::Range<u32>]) -> Self {
        let every: String = ranges
            .iter()
            .flat_map(Clone::clone)
            .filter_map(char::from_u32)
            .collect();
        let mut table = vec![0u8; 0x11_0000].into_boxed_slice();
        let classes = [
            (r"\p{L}+", LETTER),
            (r"\p{N}+", NUMBER),
            (r"\s+", SPACE),
            (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+", UPPER),
            (r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]+", LOWER),
            (r"[\r\n]+", NEWLINE),
            (r"[\p{P}\p{S}]+", PUNCT_OR_SYMBOL),
            (deepseek::SPLITS[1], CJK),
        ];
        for (pattern, bit) in classes {
            let regex = SysRegex::new(pattern).expect("a valid class");
            for (start, end) in regex.find_iter(&every) {
                for c in every[start..end].chars() {
                    table[c as usize] |= bit;
                }
            }
        }
        let mut folds = HashMap::default();
        let any = SysRegex::new("(?i:[strevmld])").expect("a valid class");
        let letters: Vec<(u8, SysRegex)> = b"strevmld"
            .iter()
            .map(|&l| {
                (
                    l,
                    SysRegex::new(&format!("^(?i:{})$", char::from(l))).expect("valid"),
                )
            })
            .collect();
        for (start, end) in any.find_iter(&every) {
            let c = &every[start..end];
            if !c.is_ascii()
                && let Some((letter, _)) = letters
                    .iter()
                    .find(|(_, r)| r.find_iter(c).next().is_some())
            {
                folds.insert(c.chars().next().expect("one character"), *letter);
            }
        }
        let mut ascii = [0; 128];
        ascii.copy_from_slice(&table[..128]);
        Self {
            table,
            ascii,
            folds,
        }
    }

    /// The ASCII lowercase letter that `(?i)` matches `c` to, or `c` itself if it is ASCII.
    fn fold(&self, c: char) -> Option<u8> {
        if c.is_ascii() {
            u8::try_from(c).ok().map(|b| b.to_ascii_lowercase())
        } else {
            self.folds.get(&c).copied()
        }
    }
}

/// The top bit of each byte of `word` (little-endian) that is not an ASCII letter, with no branch.
#[inline(always)]
fn not_ascii_letters(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = ONES * 0x80;
    // Lower-cased with the top bits cleared, so adding below can carry into no other byte.
    let folded = (word | (ONES * 0x20)) & !TOPS;
    let from_a = folded + ONES * u64::from(0x80 - b'a');
    let past_z = folded + ONES * u64::from(0x80 - b'z' - 1);
    let letters = from_a & !past_z & !word & TOPS;
    !letters & TOPS
}

/// One text being scanned. Positions are byte offsets at character boundaries.
struct Scan<'t> {
    text: &'t str,
    bytes: &'t [u8],
    classes: &'static Classes,
}

// The scanner's steps are forced inline: left to the compiler, `at` stayed a call per character and
// the scan ran at 223 MB/s instead of 323 (tools/bench/prep.py's per-stage profile, GPT-2).
#[allow(clippy::inline_always)]
impl Scan<'_> {
    /// The class bits and the UTF-8 length of the character at `at` (`(0, 0)` at the end).
    #[inline(always)]
    fn at(&self, at: usize) -> (u8, usize) {
        match self.bytes.get(at) {
            None => (0, 0),
            Some(&b) if b < 0x80 => (self.classes.ascii[usize::from(b)], 1),
            Some(_) => self.beyond_ascii(at),
        }
    }

    #[inline(never)]
    fn beyond_ascii(&self, at: usize) -> (u8, usize) {
        let c = self.text[at..]
            .chars()
            .next()
            .expect("a character boundary");
        (self.classes.table[c as usize], c.len_utf8())
    }

    /// The end of the run of characters from `at` whose class satisfies `keep`.
    #[inline(always)]
    fn run(&self, mut at: usize, keep: impl Fn(u8) -> bool) -> usize {
        loop {
            let (class, len) = self.at(at);
            if len == 0 || !keep(class) {
                return at;
            }
            at += len;
        }
    }

    /// The end of the run of letters from `at` (which starts one): ASCII letters eight bytes at a time,
    /// then character by character past any other letter.
    #[inline(always)]
    fn letters(&self, mut at: usize) -> usize {
        while let Some(chunk) = self.bytes.get(at..at + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let others = not_ascii_letters(u64::from_le_bytes(word));
            if others != 0 {
                at += (others.trailing_zeros() / 8) as usize;
                // An ASCII byte that is no letter ends the run; another character is looked up.
                if self.bytes[at] < 0x80 {
                    return at;
                }
                break;
            }
            at += 8;
        }
        self.run(at, |c| c & LETTER != 0)
    }

    fn other(class: u8) -> bool {
        class & (LETTER | NUMBER | SPACE) == 0
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` after the apostrophe at `at`, case-sensitive or as `(?i)` folds.
    fn contraction(&self, at: usize, fold: bool) -> Option<usize> {
        let mut chars = self.text[at + 1..].chars();
        let letter = |c: Option<char>| -> Option<(u8, usize)> {
            let c = c?;
            let folded = if fold {
                self.classes.fold(c)?
            } else {
                u8::try_from(c).ok()?
            };
            Some((folded, c.len_utf8()))
        };
        let (first, first_len) = letter(chars.next())?;
        let single = |n: usize| Some(at + 1 + n);
        match first {
            b's' | b't' | b'm' | b'd' => single(first_len),
            b'r' | b'v' | b'l' => {
                let (second, second_len) = letter(chars.next())?;
                let wanted = if first == b'l' { b'l' } else { b'e' };
                (second == wanted).then_some(at + 1 + first_len + second_len)
            }
            _ => None,
        }
    }

    /// `\s+(?!\S)|\s+` at the whitespace at `at`: the run, less its last character when a non-space
    /// follows and the run has more than one.
    #[inline(always)]
    fn spaces(&self, at: usize) -> usize {
        let mut end = at;
        let mut last = at;
        loop {
            let (class, len) = self.at(end);
            if len == 0 || class & SPACE == 0 {
                break;
            }
            last = end;
            end += len;
        }
        if end == self.bytes.len() || last == at {
            end
        } else {
            last
        }
    }

    /// `\s*[\r\n]+` at the whitespace at `at`: up to and including the run's last `\r` or `\n`.
    fn spaces_to_newline(&self, at: usize) -> Option<usize> {
        let mut end = at;
        let mut newline_end = None;
        loop {
            let (class, len) = self.at(end);
            if len == 0 || class & SPACE == 0 {
                return newline_end;
            }
            end += len;
            if class & NEWLINE != 0 {
                newline_end = Some(end);
            }
        }
    }

    #[inline(always)]
    fn gpt2(&self, at: usize) -> usize {
        let first = self.bytes[at];
        // 's|'t|'re|'ve|'m|'ll|'d
        if first == b'\''
            && let Some(end) = self.contraction(at, false)
        {
            return end;
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: with the space if one leads (a space is in none of
        // the three classes, so without it they cannot match there).
        let from = if first == b' ' { at + 1 } else { at };
        let (class, len) = self.at(from);
        if len > 0 {
            if class & LETTER != 0 {
                return self.letters(from);
            }
            if class & NUMBER != 0 {
                return self.run(from, |c| c & NUMBER != 0);
            }
            if Self::other(class) {
                return self.run(from, Self::other);
            }
        }
        self.spaces(at)
    }

    #[inline(always)]
    fn cl100k(&self, at: usize, max_digits: usize) -> usize {
        let (class, len) = self.at(at);
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if self.bytes[at] == b'\''
            && let Some(end) = self.contraction(at, true)
        {
            return end;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if class & LETTER != 0 {
            return self.letters(at);
        }
        if class & (NEWLINE | NUMBER) == 0 && self.at(at + len).0 & LETTER != 0 {
            return self.letters(at + len);
        }
        // \p{N}{1,max}
        if class & NUMBER != 0 {
            let mut end = at;
            for _ in 0..max_digits {
                let (class, len) = self.at(end);
                if len == 0 || class & NUMBER == 0 {
                    break;
                }
                end += len;
            }
            return end;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        if let Some(end) = self.punctuation(at, |c| c == b'\r' || c == b'\n') {
            return end;
        }
        // \s*[\r\n]+, then \s+(?!\S)|\s+
        self.spaces_to_newline(at)
            .unwrap_or_else(|| self.spaces(at))
    }

    /// ` ?[^\s\p{L}\p{N}]+` followed by the bytes `tail` accepts, repeated.
    #[inline(always)]
    fn punctuation(&self, at: usize, tail: impl Fn(u8) -> bool) -> Option<usize> {
        let from = if self.bytes[at] == b' ' { at + 1 } else { at };
        let (class, len) = self.at(from);
        if len == 0 || !Self::other(class) {
            return None;
        }
        let mut end = self.run(from, Self::other);
        while self.bytes.get(end).is_some_and(|&b| tail(b)) {
            end += 1;
        }
        Some(end)
    }

    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+` from `at`. The upper run is taken
    /// whole; if a lower character follows, the lower run from there ends the match; otherwise the
    /// engine gives back upper characters until the last one that is also lower, which ends it.
    fn cased_lower(&self, at: usize) -> Option<usize> {
        let mut end = at;
        let mut last_lower_end = None;
        loop {
            let (class, len) = self.at(end);
            if len == 0 || class & UPPER == 0 {
                if len > 0 && class & LOWER != 0 {
                    return Some(self.run(end, |c| c & LOWER != 0));
                }
                return last_lower_end;
            }
            end += len;
            if class & LOWER != 0 {
                last_lower_end = Some(end);
            }
        }
    }

    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*` from `at`.
    fn cased_upper(&self, at: usize) -> Option<usize> {
        if self.at(at).0 & UPPER == 0 {
            return None;
        }
        let end = self.run(at, |c| c & UPPER != 0);
        Some(self.run(end, |c| c & LOWER != 0))
    }

    #[inline(always)]
    fn tekken(&self, at: usize) -> usize {
        let (class, len) = self.at(at);
        // The optional `[^\r\n\p{L}\p{N}]` leading the first two alternatives: tried with it, then without.
        let lead = class & (NEWLINE | LETTER | NUMBER) == 0;
        for cased in [Self::cased_lower, Self::cased_upper] {
            if lead && let Some(end) = cased(self, at + len) {
                return end;
            }
            if let Some(end) = cased(self, at) {
                return end;
            }
        }
        // \p{N}
        if class & NUMBER != 0 {
            return at + len;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
        if let Some(end) = self.punctuation(at, |c| matches!(c, b'\r' | b'\n' | b'/')) {
            return end;
        }
        self.spaces_to_newline(at)
            .unwrap_or_else(|| self.spaces(at))
    }

    /// o200k: tekken's branches, with `(?i:'s|'t|'re|'ve|'m|'ll|'d)?` after each letter branch and
    /// `\p{N}{1,3}` for `\p{N}`.
    #[inline(always)]
    fn o200k(&self, at: usize) -> usize {
        let (class, len) = self.at(at);
        // The contraction is optional and ends its alternative, so no later part can fail and make the
        // engine backtrack into the letters: the letters match as in tekken, then the contraction is
        // taken if it is there.
        let lead = class & (NEWLINE | LETTER | NUMBER) == 0;
        for cased in [Self::cased_lower, Self::cased_upper] {
            let letters = if lead && let Some(end) = cased(self, at + len) {
                Some(end)
            } else {
                cased(self, at)
            };
            if let Some(end) = letters {
                return if self.bytes.get(end) == Some(&b'\'') {
                    self.contraction(end, true).unwrap_or(end)
                } else {
                    end
                };
            }
        }
        // \p{N}{1,3}
        if class & NUMBER != 0 {
            return self.digits(at, 3);
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
        if let Some(end) = self.punctuation(at, |c| matches!(c, b'\r' | b'\n' | b'/')) {
            return end;
        }
        // \s*[\r\n]+, then \s+(?!\S)|\s+
        self.spaces_to_newline(at)
            .unwrap_or_else(|| self.spaces(at))
    }

    /// `\p{N}{1,max}` at the number at `at`.
    fn digits(&self, at: usize, max_digits: usize) -> usize {
        let mut end = at;
        for _ in 0..max_digits {
            let (class, len) = self.at(end);
            if len == 0 || class & NUMBER == 0 {
                break;
            }
            end += len;
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_test_finds_exactly_the_ascii_letters_at_every_byte() {
        for b in 0..=255u8 {
            for lane in 0..8 {
                let mut word = [b'a'; 8];
                word[lane] = b;
                let others = not_ascii_letters(u64::from_le_bytes(word));
                let expected = if b.is_ascii_alphabetic() {
                    0
                } else {
                    0x80 << (8 * lane)
                };
                assert_eq!(others, expected, "byte {b:#x} in lane {lane}");
                // Neighbours that are not letters (or not ASCII) do not change the verdict.
                let mut noisy = [0xFFu8; 8];
                noisy[lane] = b;
                let others = not_ascii_letters(u64::from_le_bytes(noisy));
                assert_eq!(others & (0xFF << (8 * lane)), expected, "{b:#x} {lane}");
            }
        }
    }

    fn pieces(pattern: Pattern, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        pattern.split(text, |p| out.push(p));
        out
    }

    fn oniguruma<'t>(regex: &str, text: &'t str) -> Vec<&'t str> {
        let regex = SysRegex::new(regex).unwrap();
        regex.find_iter(text).map(|(s, e)| &text[s..e]).collect()
    }

    #[test]
    fn the_patterns_split_as_oniguruma_does_on_edge_cases() {
        let texts = [
            "Hello world's  end\n\n  x",
            "I'LL 'Re 'ſ 'Ve don't 12345 x\r\n\r\n \t y  ",
            "ÉCOLE École eCOLE ǅungla 𝐀𝐛 a\u{301}b \u{301}x !/\n/ a/b",
            "   ",
            "\n",
            " ",
            "'",
            "x  \n  y",
            "١٢٣٤ 一二三 ⅫⅢ",
        ];
        for (regex, pattern) in [
            (GPT2, Pattern::Gpt2),
            (CL100K, Pattern::Cl100k { max_digits: 3 }),
            (QWEN2, Pattern::Cl100k { max_digits: 1 }),
            (TEKKEN, Pattern::Tekken),
        ] {
            assert_eq!(Pattern::from_regex(regex), Some(pattern));
            for text in texts {
                assert_eq!(
                    pieces(pattern, text),
                    oniguruma(regex, text),
                    "{pattern:?} on {text:?}"
                );
            }
        }
    }

    #[test]
    fn o200k_takes_a_contraction_after_either_letter_branch() {
        assert_eq!(Pattern::from_regex(O200K), Some(Pattern::O200k));
        let texts = [
            "HELLO'S World'LL don'tcha I'ſ x'Re ǅ'd can'T we'VE 'll 'S",
            "ÉCOLE'S École'st eCOLE'm ǅungla'll 𝐀𝐛'd a\u{301}'s \u{301}'t ʰ'RE",
            "x'  y'\n z'1 ''s a''t A'l'l",
            "1234567 ١٢٣٤٥ ⅫⅢⅣⅤ 12'.3",
            "a.\n/b !/\n/ ?//x :\r\n\r\n/y a/b",
            "   \n\t x  \r\n  y \u{3000}\n",
        ];
        for text in texts {
            assert_eq!(
                pieces(Pattern::O200k, text),
                oniguruma(O200K, text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_planes_left_out_hold_no_character_of_a_class() {
        let everything = Classes::over(&[0..0x8_0000, 0x8_0000..0x11_0000]);
        let assigned = Classes::get();
        assert_eq!(everything.table, assigned.table);
        assert_eq!(everything.folds, assigned.folds);
        assert!(assigned.table[0x4_0000..0xE_0000].iter().all(|&c| c == 0));
    }

    #[test]
    fn the_long_s_folds_to_s() {
        assert_eq!(Classes::get().fold('ſ'), Some(b's'));
        assert_eq!(Classes::get().fold('x'), Some(b'x'));
    }
}
