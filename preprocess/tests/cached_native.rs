//! Issue 18's native steps on the cached path (`flame_preprocess::cached::native`): for each normalizer and
//! pre-tokenizer they cover, alone and in sequences, the pre-tokens the model is given are the crate's
//! (`extract_and_normalize`, then the pre-tokenizer) and the ids are the crate's encoder's, on random
//! Unicode strings. Each shape is kyoto-unigram's model with that normalizer and pre-tokenizer and two
//! non-special added tokens (one with `lstrip` and `rstrip`), so that documents have several sections.

use std::path::PathBuf;
use std::sync::OnceLock;

use flame_preprocess::cached::CachedModel;
use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizer, Tokenizer};

use crate::cached::unicode_text;
use crate::tokenizer_fixtures::tokenizers_dir;

/// A shape on both sides.
struct Shape {
    name: String,
    ours: CachedModel,
    encoder: TextEncoder,
    theirs: Tokenizer,
}

fn metaspace(scheme: &str, split: bool) -> Value {
    json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": scheme, "split": split})
}

fn byte_level(add_prefix_space: bool, use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true,
           "use_regex": use_regex})
}

fn punctuation(behavior: &str) -> Value {
    json!({"type": "Punctuation", "behavior": behavior})
}

fn sequence(key: &str, members: &[Value]) -> Value {
    json!({"type": "Sequence", key: members})
}

/// kyoto-unigram's `tokenizer.json` with `normalizer`, `pre_tokenizer` and two non-special added tokens.
fn shaped(normalizer: &Value, pre_tokenizer: &Value) -> Value {
    let path = tokenizers_dir().join("kyoto-unigram/tokenizer.json");
    let mut json: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let vocab_size = json["model"]["vocab"].as_array().unwrap().len();
    for (i, (content, strip)) in [("<META>", false), ("<EOT>", true)].iter().enumerate() {
        json["added_tokens"].as_array_mut().unwrap().push(json!({
            "id": vocab_size + i, "content": content, "single_word": false, "lstrip": strip,
            "rstrip": strip, "normalized": false, "special": false
        }));
    }
    json["normalizer"] = normalizer.clone();
    json["pre_tokenizer"] = pre_tokenizer.clone();
    json
}

/// Loads `json` on both sides.
fn load(name: &str, json: &Value) -> Shape {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let path: PathBuf = dir.join(format!("{}.json", name.replace(['/', ' '], "_")));
    std::fs::write(&path, serde_json::to_vec(json).unwrap()).unwrap();
    let mut theirs = Tokenizer::from_file(&path).unwrap();
    theirs.set_encode_special_tokens(true);
    Shape {
        name: name.to_owned(),
        ours: CachedModel::new(theirs.clone(), json),
        encoder: TextEncoder::load(&path, BosPolicy::Never, false, false).unwrap(),
        theirs,
    }
}

/// The pre-tokenizers the native steps cover, each alone and in a few sequences, under no normalizer.
fn pre_tokenizer_shapes() -> Vec<(String, Value)> {
    let mut shapes = Vec::new();
    for scheme in ["always", "first", "never"] {
        for split in [true, false] {
            shapes.push((
                format!("Metaspace {scheme} {split}"),
                metaspace(scheme, split),
            ));
        }
    }
    shapes.push(("WhitespaceSplit".into(), json!({"type": "WhitespaceSplit"})));
    shapes.push(("Whitespace".into(), json!({"type": "Whitespace"})));
    for individual in [true, false] {
        let digits = json!({"type": "Digits", "individual_digits": individual});
        shapes.push((format!("Digits {individual}"), digits));
    }
    for behavior in [
        "Removed",
        "Isolated",
        "MergedWithPrevious",
        "MergedWithNext",
        "Contiguous",
    ] {
        shapes.push((format!("Punctuation {behavior}"), punctuation(behavior)));
    }
    for prefix in [false, true] {
        for regex in [true, false] {
            shapes.push((
                format!("ByteLevel prefix {prefix} regex {regex}"),
                byte_level(prefix, regex),
            ));
        }
    }
    let digits = |individual: bool| json!({"type": "Digits", "individual_digits": individual});
    let sequences = [
        vec![
            metaspace("always", true),
            digits(true),
            punctuation("Isolated"),
        ],
        vec![
            json!({"type": "WhitespaceSplit"}),
            metaspace("always", true),
        ],
        vec![
            metaspace("first", true),
            json!({"type": "Whitespace"}),
            digits(false),
            punctuation("MergedWithNext"),
        ],
        vec![punctuation("Contiguous"), metaspace("never", false)],
        vec![digits(true), byte_level(true, true)],
        vec![byte_level(false, true), punctuation("Isolated")],
    ];
    for (i, members) in sequences.iter().enumerate() {
        shapes.push((
            format!("pre-tokenizer sequence {i}"),
            sequence("pretokenizers", members),
        ));
    }
    shapes
}

/// botchan-unigram's `Precompiled` normalizer (T5's SentencePiece character map).
fn precompiled() -> Value {
    let path = tokenizers_dir().join("botchan-unigram/tokenizer.json");
    let json: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["normalizer"].clone()
}

/// The normalizers the native steps cover, each alone and in a sequence, before a `Metaspace` (whose
/// `first` reads where the normalized text starts) or a split.
fn normalizer_shapes() -> Vec<(String, Value, Value)> {
    let strip = |left: bool, right: bool| json!({"type": "Strip", "strip_left": left, "strip_right": right});
    let replace = |pattern: &str, content: &str| json!({"type": "Replace", "pattern": {"String": pattern}, "content": content});
    let prepend = json!({"type": "Prepend", "prepend": "\u{2581}"});
    let first = metaspace("first", true);
    vec![
        ("NFC".into(), json!({"type": "NFC"}), first.clone()),
        ("NFKC".into(), json!({"type": "NFKC"}), first.clone()),
        (
            "Lowercase".into(),
            json!({"type": "Lowercase"}),
            first.clone(),
        ),
        ("Strip both".into(), strip(true, true), first.clone()),
        ("Strip left".into(), strip(true, false), first.clone()),
        (
            "Strip right".into(),
            strip(false, true),
            metaspace("always", false),
        ),
        (
            "Replace space".into(),
            replace(" ", "\u{2581}"),
            metaspace("always", true),
        ),
        (
            "Replace to nothing".into(),
            replace("e", ""),
            json!({"type": "Whitespace"}),
        ),
        (
            "Replace longer".into(),
            replace("1", "one "),
            json!({"type": "WhitespaceSplit"}),
        ),
        ("Prepend".into(), prepend.clone(), first),
        (
            "normalizer sequence".into(),
            sequence(
                "normalizers",
                &[
                    json!({"type": "NFKC"}),
                    json!({"type": "Lowercase"}),
                    strip(true, true),
                    replace("  ", " "),
                    prepend,
                ],
            ),
            sequence(
                "pretokenizers",
                &[metaspace("never", true), punctuation("Removed")],
            ),
        ),
        (
            "Precompiled".into(),
            precompiled(),
            metaspace("always", true),
        ),
        (
            "Precompiled, botchan's".into(),
            precompiled(),
            sequence(
                "pretokenizers",
                &[
                    json!({"type": "WhitespaceSplit"}),
                    metaspace("always", true),
                ],
            ),
        ),
        (
            "Precompiled in a sequence".into(),
            sequence(
                "normalizers",
                &[json!({"type": "Lowercase"}), precompiled()],
            ),
            json!({"type": "Whitespace"}),
        ),
        ("nothing".into(), Value::Null, Value::Null),
    ]
}

fn shapes() -> &'static [Shape] {
    static SHAPES: OnceLock<Vec<Shape>> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let mut shapes: Vec<Shape> = pre_tokenizer_shapes()
            .into_iter()
            .map(|(name, pre)| load(&name, &shaped(&Value::Null, &pre)))
            .collect();
        for (name, normalizer, pre) in normalizer_shapes() {
            shapes.push(load(&name, &shaped(&normalizer, &pre)));
        }
        shapes
    })
}

/// The crate's pre-tokens of `text`: its added-token split and normalizer, then its pre-tokenizer.
fn crate_pre_tokens(tokenizer: &Tokenizer, text: &str) -> Vec<(String, Option<u32>)> {
    let mut pre = tokenizer
        .get_added_vocabulary()
        .extract_and_normalize(tokenizer.get_normalizer(), text);
    if let Some(pre_tokenizer) = tokenizer.get_pre_tokenizer() {
        pre_tokenizer.pre_tokenize(&mut pre).unwrap();
    }
    let mut pieces = Vec::new();
    for (piece, _, tokens) in pre.get_splits(OffsetReferential::Normalized, OffsetType::None) {
        match tokens {
            None => pieces.push((piece.to_owned(), None)),
            Some(tokens) => pieces.extend(tokens.iter().map(|t| (String::new(), Some(t.id)))),
        }
    }
    pieces
}

impl Shape {
    fn assert_same(&self, text: &str) -> Result<(), TestCaseError> {
        let ours = self.ours.pre_tokens(text).unwrap();
        prop_assert_eq!(
            ours,
            crate_pre_tokens(&self.theirs, text),
            "{} on {:?}",
            self.name,
            text
        );
        let mut ids = Vec::new();
        self.encoder.encode(text, &mut ids).unwrap();
        let want = self.theirs.encode_fast(text, false).unwrap();
        prop_assert_eq!(&ids, want.get_ids(), "{} on {:?}", self.name, text);
        Ok(())
    }
}

#[test]
fn every_covered_shape_is_native() {
    for shape in shapes() {
        assert!(shape.ours.is_native(), "{}", shape.name);
        let path = shape.encoder.fast_path().unwrap();
        assert!(path.ends_with(", native)"), "{}: {path}", shape.name);
    }
}

/// A step the native code lacks, or `first` where only the crate's alignments say where a piece starts,
/// keeps the crate's components.
#[test]
fn other_steps_keep_the_crate_components() {
    let first = metaspace("first", true);
    let declined = [
        (precompiled(), first.clone()),
        (json!({"type": "NFKD"}), first.clone()),
        (
            json!({"type": "Replace", "pattern": {"Regex": " +"}, "content": " "}),
            metaspace("always", true),
        ),
        (
            json!({"type": "Replace", "pattern": {"String": "a"}, "content": "b"}),
            first.clone(),
        ),
        (
            Value::Null,
            sequence(
                "pretokenizers",
                &[json!({"type": "WhitespaceSplit"}), first],
            ),
        ),
        (
            Value::Null,
            json!({"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Isolated",
                   "invert": false}),
        ),
    ];
    for (i, (normalizer, pre)) in declined.iter().enumerate() {
        let shape = load(&format!("declined {i}"), &shaped(normalizer, pre));
        assert!(!shape.ours.is_native(), "{normalizer} {pre}");
        shape
            .assert_same("  Hello <META>World 12 \u{fb01}!")
            .unwrap();
    }
}

#[test]
fn hand_picked_texts_get_the_crate_pre_tokens() {
    let texts = [
        "",
        " ",
        "  ",
        "<META>",
        " <EOT> x",
        "<META> a",
        "\u{2581}x  y\u{2581}\u{2581}z ",
        "Hello, world!! 12345 people\t in 2024...",
        "\u{130}\u{3a3}\u{3a3} \u{fb01}ne \u{2460}\u{ff21}\u{ff11} cafe\u{301}",
        "\u{a0}\u{3000}x\u{85}",
        "x\r\n\u{301}a\u{301}\r\r\n\u{ff21}\u{1F1EF}\u{1F1F5}\u{1F1EF}\u{2460}\u{301}",
    ];
    for shape in shapes() {
        for text in texts {
            shape.assert_same(text).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_strings_get_the_crate_pre_tokens_and_ids(text in unicode_text()) {
        for shape in shapes() {
            shape.assert_same(&text)?;
        }
    }
}
