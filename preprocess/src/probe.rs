//! What a tokenizer says about itself beyond its ids: BOS and EOS, the vocabulary's size, and what its
//! post-processor puts around a document. Read from the `tokenizers` crate's tokenizer
//! ([`Probes::of_tokenizer`]), or, when a fast encoder does the encoding, from `tokenizer.json` alone
//! ([`Probes::of_json`]) so that the crate's tokenizer, whose load is a second parse of the file and most
//! of a short run's start-up (0.4 to 0.8 s for a 200k vocabulary), is never built. Both give the same
//! answers (tested on every tokenizer of the fixtures); where the JSON's added-token ids are not the ones
//! the crate would assign, [`Probes::of_json`] declines and the crate is asked.

use std::path::Path;

use anyhow::Context;
use tokenizers::Tokenizer;

/// Names taken for BOS, in order of preference.
pub const BOS_NAMES: [&str; 4] = ["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"];
/// Names taken for EOS, in order of preference.
pub const EOS_NAMES: [&str; 5] = [
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<eos>",
    "<|im_end|>",
];

/// A tokenizer's identity numbers and its post-processor's ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probes {
    /// BOS id, if any.
    pub bos_id: Option<u32>,
    /// EOS id, if any.
    pub eos_id: Option<u32>,
    /// Vocabulary size with added tokens (the crate's `get_vocab_size(true)`).
    pub vocab_size: u64,
    /// What the post-processor puts before a document's ids.
    pub special_prefix: Vec<u32>,
    /// What it puts after them.
    pub special_suffix: Vec<u32>,
}

impl Probes {
    /// Asks the `tokenizers` crate's `tokenizer`; `config` is a `tokenizer_config.json` whose `bos_token`
    /// and `eos_token` name BOS and EOS.
    ///
    /// # Errors
    /// The config cannot be read, or the post-processor changes a document's ids.
    pub fn of_tokenizer(tokenizer: &Tokenizer, config: Option<&Path>) -> anyhow::Result<Self> {
        let specials = tokenizer.get_added_tokens_decoder();
        let special = |name: &str| {
            specials
                .iter()
                .find(|(_, t)| t.special && t.content == name)
                .map(|(id, _)| *id)
        };
        let (bos_id, eos_id) = named(special, |name| tokenizer.token_to_id(name), config)?;
        let (special_prefix, special_suffix) = special_affixes(tokenizer)?;
        Ok(Self {
            bos_id,
            eos_id,
            vocab_size: tokenizer.get_vocab_size(true) as u64,
            special_prefix,
            special_suffix,
        })
    }

    /// Reads `json` (a parsed `tokenizer.json` whose model has a vocabulary object: BPE, WordPiece)
    /// without building the crate's tokenizer; `None` where that is not certain to give
    /// [`Probes::of_tokenizer`]'s answers.
    ///
    /// # Errors
    /// As [`Probes::of_tokenizer`].
    pub fn of_json(
        json: &serde_json::Value,
        config: Option<&Path>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(vocab) = json["model"]["vocab"].as_object() else {
            return Ok(None);
        };
        let Some(added) = AddedIds::of(json, vocab) else {
            return Ok(None);
        };
        let special = |name: &str| {
            added
                .tokens
                .iter()
                .find(|(content, _, special)| *special && content == name)
                .map(|(_, id, _)| *id)
        };
        let token_to_id = |name: &str| {
            added
                .tokens
                .iter()
                .find(|(content, _, _)| content == name)
                .map(|(_, id, _)| *id)
                .or_else(|| {
                    let id = vocab.get(name)?.as_u64()?;
                    u32::try_from(id).ok()
                })
        };
        let (bos_id, eos_id) = named(special, token_to_id, config)?;
        // The post-processor on its own, over a model that knows one word: its ids are in the JSON.
        let probe = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": json["post_processor"],
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"},
        });
        let probe: Tokenizer = serde_json::from_value(probe)
            .map_err(|e| anyhow::anyhow!("the post-processor alone does not load: {e}"))?;
        let (special_prefix, special_suffix) = special_affixes(&probe)?;
        Ok(Some(Self {
            bos_id,
            eos_id,
            vocab_size: (vocab.len() + added.beyond_vocab) as u64,
            special_prefix,
            special_suffix,
        }))
    }
}

/// The added tokens' ids as the crate assigns them (a token of the vocabulary keeps its id, the others
/// follow the vocabulary in order), when the JSON's ids are exactly those.
struct AddedIds {
    /// (content, id, special), in the JSON's order.
    tokens: Vec<(String, u32, bool)>,
    /// How many are not in the vocabulary.
    beyond_vocab: usize,
}

impl AddedIds {
    fn of(
        json: &serde_json::Value,
        vocab: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<Self> {
        let mut tokens: Vec<(String, u32, bool)> = Vec::new();
        let mut next = u32::try_from(vocab.len()).ok()?;
        let mut beyond_vocab = 0;
        for token in json["added_tokens"].as_array()? {
            let content = token["content"].as_str()?;
            let id = u32::try_from(token["id"].as_u64()?).ok()?;
            if content.is_empty() || tokens.iter().any(|(c, _, _)| c == content) {
                return None;
            }
            let assigned = if let Some(in_vocab) = vocab.get(content) {
                u32::try_from(in_vocab.as_u64()?).ok()?
            } else {
                beyond_vocab += 1;
                next += 1;
                next - 1
            };
            if assigned != id {
                return None;
            }
            tokens.push((content.to_owned(), id, token["special"] == true));
        }
        Some(Self {
            tokens,
            beyond_vocab,
        })
    }
}

/// BOS and EOS: the special tokens of [`BOS_NAMES`] and [`EOS_NAMES`], unless `config` names others
/// (`bos_token`, `eos_token`: a string, or an object with `content`), looked up with `token_to_id`.
fn named(
    special: impl Fn(&str) -> Option<u32>,
    token_to_id: impl Fn(&str) -> Option<u32>,
    config: Option<&Path>,
) -> anyhow::Result<(Option<u32>, Option<u32>)> {
    let by_name = |names: &[&str]| names.iter().find_map(|n| special(n));
    let (mut bos, mut eos) = (by_name(&BOS_NAMES), by_name(&EOS_NAMES));
    if let Some(config) = config {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("{}: read", config.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", config.display()))?;
        let token = |key: &str| -> Option<String> {
            match &json[key] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => {
                    o.get("content").and_then(|c| c.as_str()).map(str::to_owned)
                }
                _ => None,
            }
        };
        if let Some(name) = token("bos_token") {
            bos = token_to_id(&name);
        }
        if let Some(name) = token("eos_token") {
            eos = token_to_id(&name);
        }
    }
    Ok((bos, eos))
}

/// What `tokenizer`'s post-processor puts before and after a document's ids.
///
/// # Errors
/// The tokenizer fails, or its post-processor changes the document's own ids.
pub fn special_affixes(tokenizer: &Tokenizer) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    let encode = |text, special| {
        tokenizer
            .encode_fast(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))
    };
    // The first probe text the model gives ids to: a vocabulary without "a" (and no unknown token)
    // encodes it to nothing, where the affixes could not be told apart.
    for text in AFFIX_PROBES {
        let plain = encode(text, false)?;
        if plain.is_empty() {
            continue;
        }
        let special = encode(text, true)?;
        let at = special
            .windows(plain.len())
            .position(|w| w == plain.as_slice())
            .context("the post-processor changes the ids of a document")?;
        return Ok((special[..at].to_vec(), special[at + plain.len()..].to_vec()));
    }
    anyhow::bail!(
        "the tokenizer encodes none of {AFFIX_PROBES:?} to any id, so what its post-processor adds \
         around a document cannot be told"
    )
}

/// Texts [`special_affixes`] encodes, in order, until one has ids.
const AFFIX_PROBES: [&str; 4] = ["a", "hello world", "0", "."];

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn the_json_says_what_the_tokenizer_says_for_the_shared_tokenizers() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tokenizers");
        let mut checked = 0;
        for entry in std::fs::read_dir(&shared).unwrap() {
            let file = entry.unwrap().path().join("tokenizer.json");
            let bytes = std::fs::read(&file).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let tokenizer = Tokenizer::from_bytes(&bytes).unwrap();
            let from_json = Probes::of_json(&json, None).unwrap();
            assert_eq!(
                from_json,
                Some(Probes::of_tokenizer(&tokenizer, None).unwrap()),
                "{}",
                file.display()
            );
            checked += 1;
        }
        assert_eq!(checked, 4, "gpt2, mistral, cl100k, tekken");
    }

    /// A BPE over `a` and `b` (`</s>` in its vocabulary too) with `added` as its added tokens and a
    /// BOS/EOS template.
    fn small(added: &serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": null, "decoder": null,
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [3], "tokens": ["<s>"]},
                                   "</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "vocab": {"a": 0, "</s>": 1, "b": 2}, "merges": []}
        })
    }

    fn added(content: &str, id: u64) -> serde_json::Value {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    }

    #[test]
    fn added_tokens_beyond_the_vocabulary_count_and_ids_the_crate_would_not_give_are_declined() {
        // `</s>` is in the vocabulary, `<s>` and `<pad>` follow it.
        let json = small(&serde_json::json!([
            added("</s>", 1),
            added("<s>", 3),
            added("<pad>", 4)
        ]));
        let tokenizer: Tokenizer = serde_json::from_value(json.clone()).unwrap();
        let from_json = Probes::of_json(&json, None).unwrap().unwrap();
        assert_eq!(from_json, Probes::of_tokenizer(&tokenizer, None).unwrap());
        assert_eq!(
            (from_json.vocab_size, from_json.bos_id, from_json.eos_id),
            (5, Some(3), Some(1))
        );
        // Ids the crate would assign otherwise (it numbers `<s>` 3, not 7): the JSON is not trusted.
        let json = small(&serde_json::json!([added("</s>", 1), added("<s>", 7)]));
        assert_eq!(Probes::of_json(&json, None).unwrap(), None);
    }

    /// A tokenizer JSON of a BPE model over `vocab` (no unknown token: other text gets no ids) with a
    /// template that puts id 0 first.
    fn bpe_without(vocab: &str) -> Tokenizer {
        let json = format!(
            r#"{{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
                "post_processor": {{"type": "TemplateProcessing",
                    "single": [{{"SpecialToken": {{"id": "<s>", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}],
                    "pair": [{{"Sequence": {{"id": "A", "type_id": 0}}}}],
                    "special_tokens": {{"<s>": {{"id": "<s>", "ids": [0], "tokens": ["<s>"]}}}}}},
                "decoder": null,
                "model": {{"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                    "vocab": {vocab}, "merges": []}}}}"#
        );
        Tokenizer::from_bytes(json.as_bytes()).unwrap()
    }

    #[test]
    fn affixes_come_from_the_first_probe_with_ids_and_none_is_an_error() {
        // "a" has no id here (it used to panic: a window of 0); "hello world"'s letters do.
        let tokenizer = bpe_without(
            r#"{"<s>": 0, "h": 1, "e": 2, "l": 3, "o": 4, " ": 5, "w": 6, "r": 7, "d": 8}"#,
        );
        assert_eq!(special_affixes(&tokenizer).unwrap(), (vec![0], vec![]));
        let mute = bpe_without(r#"{"<s>": 0, "z": 1}"#);
        let error = special_affixes(&mute).unwrap_err().to_string();
        assert!(error.contains("encodes none of"), "{error}");
    }
}
