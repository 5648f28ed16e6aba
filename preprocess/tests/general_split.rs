//! Issue 18's general `Split` regex path (`flame_preprocess::pretok::general`): its pieces against the
//! `tokenizers` crate's (Oniguruma through `SysRegex`, and the `Split` pre-tokenizer itself) for every
//! hand-scanned pattern on every corpus document and on random text, for patterns of other shapes, the
//! patterns it must refuse, and whole tokenizers whose split only it handles.

use flame_preprocess::pretok::general::{GeneralSplit, Keep, MULTI_CHARACTER_FOLDS};
use flame_preprocess::pretok::{self, deepseek};
use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use proptest::prelude::*;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::utils::SysRegex;
use tokenizers::{
    OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
};

use crate::tokenizer_fixtures::{corpus_files, texts, tokenizers_dir};

/// Every pattern a hand scanner implements, by name.
const SCANNED: [(&str, &str); 8] = [
    ("gpt2", pretok::GPT2),
    ("cl100k", pretok::CL100K),
    ("qwen2", pretok::QWEN2),
    ("tekken", pretok::TEKKEN),
    ("o200k", pretok::O200K),
    ("deepseek digits", deepseek::SPLITS[0]),
    ("deepseek cjk", deepseek::SPLITS[1]),
    ("deepseek words", deepseek::SPLITS[2]),
];

/// Patterns of other shapes: bounded repetitions, classes of classes, the look-ahead alternative in the
/// middle, whitespace alone, case-insensitive words, lazy repetitions, empty matches.
const OTHERS: [&str; 12] = [
    r"\p{N}{1,4}",
    r"[\p{L}\p{M}]+",
    r"'s|'t|\s+(?!\S)|\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+",
    r"\s+(?!\S)",
    r"\s+",
    r"(?i:the|and|'ll|'ve)|\w+|\d|.",
    r" ?\p{L}+?[a-z]*| ?\p{N}{2}|\s+(?!\S)",
    r"x*",
    r"\p{Lu}?\p{Ll}+|[^\p{L}]",
    r"(?:[\p{Han}\p{Hiragana}\p{Katakana}]|\p{Nd})+|\S",
    r"[^\r\n\p{L}\p{N}]?(?:\p{Lu}+|\p{Ll}+)| ?[\p{P}\p{S}&&[^/]]+|\s*[\r\n]|\s+(?!\S)|\s+",
    "",
];

/// The pieces Oniguruma's matches of `regex` and the gaps between them make (an `Isolated` split).
fn oniguruma_pieces<'t>(regex: &SysRegex, text: &'t str) -> Vec<&'t str> {
    let mut pieces = Vec::new();
    let mut previous = 0;
    for (start, end) in regex.find_iter(text) {
        pieces.push(&text[previous..start]);
        pieces.push(&text[start..end]);
        previous = end;
    }
    pieces.push(&text[previous..]);
    pieces.retain(|p| !p.is_empty());
    pieces
}

fn general_pieces<'t>(split: &GeneralSplit, text: &'t str) -> Vec<&'t str> {
    let mut pieces = Vec::new();
    split.split(text, |piece| pieces.push(piece));
    pieces
}

/// The pieces of the `tokenizers` crate's own pre-tokenizer.
fn split_pieces(pre_tokenizer: &impl PreTokenizer, text: &str) -> Vec<String> {
    let mut pretokenized = PreTokenizedString::from(text);
    pre_tokenizer.pre_tokenize(&mut pretokenized).unwrap();
    pretokenized
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| piece.to_owned())
        .collect()
}

fn compiled(patterns: &[&str]) -> Vec<(SysRegex, GeneralSplit)> {
    patterns
        .iter()
        .map(|pattern| {
            let general = GeneralSplit::new(&[(pattern, Keep::All)])
                .unwrap_or_else(|| panic!("{pattern}: refused"));
            (SysRegex::new(pattern).unwrap(), general)
        })
        .collect()
}

#[test]
fn the_scanned_patterns_split_every_corpus_document_as_oniguruma_does() {
    let compiled = compiled(&SCANNED.map(|(_, p)| p));
    let files = corpus_files();
    // Two threads, each every other file (together all documents of `../shared/data`).
    std::thread::scope(|scope| {
        for half in 0..2 {
            let (files, compiled) = (&files, &compiled);
            scope.spawn(move || {
                for path in files.iter().skip(half).step_by(2) {
                    for (i, text) in texts(path).texts.iter().enumerate() {
                        for ((name, _), (regex, general)) in SCANNED.iter().zip(compiled) {
                            let (ours, theirs) =
                                (general_pieces(general, text), oniguruma_pieces(regex, text));
                            assert!(ours == theirs, "{name}: {path} #{i} splits differently");
                        }
                    }
                }
            });
        }
    });
}

/// Random text weighted to what split patterns tell apart: spaces, line breaks and other whitespace in
/// runs, digits and other numbers, apostrophes before contractions in odd cases and folds, letters of
/// several scripts and cases, marks, CJK, punctuation and symbols, control and format characters.
fn split_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        3 => "[ ]{1,4}",
        2 => "[ \t\n\r]{1,4}",
        1 => "[\u{b}\u{c}\u{85}\u{a0}\u{1680}\u{2000}-\u{200b}\u{2028}\u{2029}\u{202f}\u{3000}\u{feff}]{1,3}",
        2 => "[0-9]{1,7}",
        1 => "[\u{0660}-\u{0669}\u{2160}-\u{2188}\u{00b2}\u{00bd}\u{ff10}-\u{ff19}\u{1d7ce}]{1,4}",
        2 => "['’][sStTrRvVmMlLdDeEſK\u{212a}]{1,2}",
        3 => "[a-zA-Z]{1,8}",
        2 => "[A-ZÀ-ÖØ-Þa-zß-öø-ÿǄ-ǌʰ-ʸ\u{1d400}-\u{1d433}ΑΩαωſﬀﬁﬆ]{1,4}",
        1 => "[\u{0300}-\u{0310}\u{20d0}\u{0903}\u{0488}]{1,2}",
        1 => "[\u{0600}-\u{0620}\u{0900}-\u{0930}\u{0e00}-\u{0e40}\u{0400}-\u{0450}]{1,5}",
        1 => "[\u{4e00}-\u{4e10}\u{9fa4}-\u{9fa6}\u{3040}-\u{3042}\u{309f}-\u{30a1}\u{30fb}-\u{3100}]{1,4}",
        2 => "[.,;:!?'\"()<>/\\\\\\-\u{2014}\u{2026}\u{20ac}\u{a9}\u{2192}]{1,3}/{0,2}",
        1 => "[\u{0}-\u{8}\u{e}\u{1f}\u{7f}\u{ad}\u{200b}-\u{200f}\u{e000}\u{1F600}-\u{1F64F}\u{10ffff}]{1,2}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

fn scanned_and_others() -> &'static [(SysRegex, GeneralSplit)] {
    static COMPILED: std::sync::OnceLock<Vec<(SysRegex, GeneralSplit)>> =
        std::sync::OnceLock::new();
    COMPILED.get_or_init(|| {
        let patterns: Vec<&str> = SCANNED.iter().map(|(_, p)| *p).chain(OTHERS).collect();
        compiled(&patterns)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn random_text_splits_as_oniguruma_does(text in split_text()) {
        let patterns = SCANNED.iter().map(|(_, p)| *p).chain(OTHERS);
        for (pattern, (regex, general)) in patterns.zip(scanned_and_others()) {
            prop_assert_eq!(general_pieces(general, &text), oniguruma_pieces(regex, &text), "{}", pattern);
        }
    }

    #[test]
    fn every_behaviour_and_a_sequence_split_as_the_tokenizers_crate_does(text in split_text()) {
        for (general, theirs) in behaviours() {
            let ours: Vec<String> = general_pieces(general, &text).into_iter().map(str::to_owned).collect();
            prop_assert_eq!(ours, split_pieces(theirs, &text), "{:?}", general);
        }
    }
}

/// Each behaviour of a `Split` for a few patterns, and DeepSeek-V3's sequence of three splits (each within
/// the pieces of the one before): ours and the `tokenizers` crate's.
fn behaviours() -> &'static [(GeneralSplit, Sequence)] {
    use SplitDelimiterBehavior::{Isolated, Removed};
    static BUILT: std::sync::OnceLock<Vec<(GeneralSplit, Sequence)>> = std::sync::OnceLock::new();
    let theirs = |pattern: &str, behavior, invert| {
        PreTokenizerWrapper::Split(
            Split::new(SplitPattern::Regex(pattern.to_owned()), behavior, invert).unwrap(),
        )
    };
    BUILT.get_or_init(|| {
        let mut built = Vec::new();
        for pattern in [OTHERS[2], OTHERS[5], OTHERS[7], pretok::CL100K] {
            for (keep, behavior, invert) in [
                (Keep::All, Isolated, false),
                (Keep::All, Isolated, true),
                (Keep::Matches, Removed, true),
                (Keep::Gaps, Removed, false),
            ] {
                let ours = GeneralSplit::new(&[(pattern, keep)]).unwrap();
                built.push((ours, Sequence::new(vec![theirs(pattern, behavior, invert)])));
            }
        }
        let ours = GeneralSplit::new(&deepseek::SPLITS.map(|p| (p, Keep::All))).unwrap();
        let sequence = deepseek::SPLITS
            .iter()
            .map(|p| theirs(p, Isolated, false))
            .collect();
        built.push((ours, Sequence::new(sequence)));
        built
    })
}

#[test]
fn hand_written_texts_split_as_oniguruma_does() {
    let texts = [
        "",
        " ",
        "a b  c   d\n\n  e \t\u{3000}f  ",
        "I'LL 'Re 'ſ 'Ve don't 12345 x\r\n\r\n \t y  ",
        "ÉCOLE École ǅungla 𝐀𝐛 a\u{301}b \u{301}x !/\n/ a/b",
        "The THE tHe ﬆ ﬁ ß ſt Kelvin \u{212a} aNd",
        "١٢٣٤ 一二三 ⅫⅢ 你好世界 カタカナ ひらがな",
    ];
    for (pattern, (regex, general)) in SCANNED
        .iter()
        .map(|(_, p)| *p)
        .chain(OTHERS)
        .zip(scanned_and_others())
    {
        for text in texts {
            assert_eq!(
                general_pieces(general, text),
                oniguruma_pieces(regex, text),
                "{pattern} on {text:?}"
            );
        }
    }
}

#[test]
fn patterns_outside_the_subset_are_refused() {
    for pattern in [
        r"(?=a)b",
        r"a(?!b)",
        r"(?<=a)b",
        r"(?<!a)b",
        r"\s+(?!\S)x|\s+",
        r"(\s+(?!\S))|\s+",
        r"(a)\1",
        r"(?>a+)b",
        r"a++",
        r"a*+",
        r"^a|b$",
        r"\bword\b",
        r"\Aa",
        r"(?i)s",
        r"(?m:.)",
        r"(?x: a )",
        r"(?i:[a-z])",
        r"(?i:st)",
        r"(?i:ss|ff)",
        r"(?i:é)",
        r"(?:a|)+",
        r"(?:a*)*",
        r"a{2}?",
        r"a{1, 3}",
        r"\h+",
        r"[[:alpha:]--[a-z]]",
        r"\pL",
        "(unclosed",
    ] {
        assert!(
            GeneralSplit::new(&[(pattern, Keep::All)]).is_none(),
            "{pattern}: accepted"
        );
    }
}

/// [`MULTI_CHARACTER_FOLDS`] is exactly the pairs of ASCII letters that Oniguruma's `(?i)` matches to a
/// single character (all such characters lie below U+10000).
#[test]
fn the_multi_character_folds_are_oniguruma_s() {
    let bmp: String = (0x80..0x1_0000).filter_map(char::from_u32).collect();
    let mut found = Vec::new();
    for first in 'a'..='z' {
        for second in 'a'..='z' {
            let regex = SysRegex::new(&format!("(?i:{first}{second})")).unwrap();
            if regex.find_iter(&bmp).next().is_some() {
                found.push(format!("{first}{second}"));
            }
        }
    }
    assert_eq!(found, MULTI_CHARACTER_FOLDS);
}

/// The `tokenizers` crate's encoder on `json` (written to a temporary file) against flame-prep's, which
/// must take the general split.
fn modified_tokenizer(
    json: &serde_json::Value,
) -> (tempfile::TempDir, TextEncoder, tokenizers::Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_vec(json).unwrap()).unwrap();
    let ours = TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap();
    assert_eq!(
        ours.fast_path().as_deref(),
        Some("byte-level BPE, general regex split")
    );
    assert!(
        !ours.cuts_long_documents(),
        "no cut is argued for a general regex"
    );
    let mut theirs = tokenizers::Tokenizer::from_file(&path).unwrap();
    theirs.set_encode_special_tokens(true);
    (dir, ours, theirs)
}

/// Llama-3's tokenizer with `\p{N}{1,2}` for `\p{N}{1,3}` (no scanner), and DeepSeek-V3's with its
/// middle split's CJK class spelled with escapes (no scanner either).
fn general_tokenizers() -> &'static [(tempfile::TempDir, TextEncoder, tokenizers::Tokenizer)] {
    static LOADED: std::sync::OnceLock<
        Vec<(tempfile::TempDir, TextEncoder, tokenizers::Tokenizer)>,
    > = std::sync::OnceLock::new();
    LOADED.get_or_init(|| {
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_slice(
                &std::fs::read(tokenizers_dir().join(name).join("tokenizer.json")).unwrap(),
            )
            .unwrap()
        };
        let mut llama = read("llama-3");
        let regex = &mut llama["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"];
        assert_eq!(regex, pretok::CL100K);
        *regex = pretok::CL100K.replace(r"\p{N}{1,3}", r"\p{N}{1,2}").into();
        let mut deepseek = read("deepseek-v3");
        let regex = &mut deepseek["pre_tokenizer"]["pretokenizers"][1]["pattern"]["Regex"];
        assert_eq!(regex, deepseek::SPLITS[1]);
        *regex = r"[\x{4e00}-\x{9fa5}\x{3040}-\x{309f}\x{30a0}-\x{30ff}]+".into();
        vec![modified_tokenizer(&llama), modified_tokenizer(&deepseek)]
    })
}

#[test]
fn tokenizers_with_a_general_split_give_the_reference_ids_on_the_corpus() {
    let (mut ids, mut num_documents) = (Vec::new(), 0);
    for path in corpus_files() {
        for text in texts(&path).texts.iter().step_by(5) {
            for (_, ours, theirs) in general_tokenizers() {
                ours.encode(text, &mut ids).unwrap();
                let want = theirs.encode_fast(text.as_str(), false).unwrap();
                assert!(
                    ids == want.get_ids(),
                    "{}: {path}: {text:.80?}",
                    ours.info().name
                );
            }
            num_documents += 1;
        }
    }
    assert!(num_documents > 500, "{num_documents} documents");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn tokenizers_with_a_general_split_give_the_reference_ids(text in split_text()) {
        for (_, ours, theirs) in general_tokenizers() {
            let mut ids = Vec::new();
            ours.encode(&text, &mut ids).unwrap();
            let want = theirs.encode_fast(text.as_str(), false).unwrap();
            prop_assert_eq!(&ids, want.get_ids(), "{}", ours.info().name);
        }
    }
}

/// A run whose tokenizer's documents are not cut says so (the memory bound then depends on the longest
/// document); one whose are cut does not.
#[test]
fn a_run_says_when_its_tokenizer_encodes_long_documents_whole() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    std::fs::write(&input, "{\"text\": \"one short document\"}\n").unwrap();
    let general = general_tokenizers()[0].0.path().join("tokenizer.json");
    let gpt2 = crate::util::shared().join("data/tokenizers/gpt2/tokenizer.json");
    for (name, tokenizer, whole) in [("general", &general, true), ("gpt2", &gpt2, false)] {
        let out = dir.path().join(name);
        let run = crate::util::flame_prep(&[
            "--dataset",
            input.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(
            run.stderr
                .contains("Documents over 1 MiB are encoded whole"),
            whole,
            "{name}: {}",
            run.stderr
        );
    }
}
