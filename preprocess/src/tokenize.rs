//! Text to token ids, behind a small seam.
//!
//! [`TextEncoder`] wraps a Hugging Face `tokenizer.json` loaded by the `tokenizers` crate, the reference for
//! what the ids are. The BOS/EOS policy is explicit ([`BosPolicy`], `append_eod`), and literal
//! special-token strings inside a document (`<s>`, `<|endoftext|>`) are encoded as plain text unless
//! the user asks otherwise, so that a web page quoting `</s>` cannot forge a document boundary.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use tokenizers::Tokenizer;

/// Where BOS comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BosPolicy {
    /// Whatever the tokenizer's post-processor adds (flame's behaviour: Llama/Mistral add `<s>`, GPT-2 adds nothing).
    Tokenizer,
    /// Always prepend the tokenizer's BOS id (an error if it has none).
    Always,
    /// Never add one.
    Never,
}

/// Identity of a tokenizer, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerInfo {
    /// The path or id it was loaded from.
    pub name: String,
    /// SHA-256 of `tokenizer.json`.
    pub sha256: String,
    /// Vocabulary size with added tokens (Megatron's `len(tokenizer)`).
    pub vocab_size: u64,
    /// BOS id, if any.
    pub bos_id: Option<u32>,
    /// EOS id, if any.
    pub eos_id: Option<u32>,
}

/// A loaded tokenizer plus the policy of what to add around each document.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    info: TokenizerInfo,
    bos: BosPolicy,
    append_eod: bool,
}

const BOS_NAMES: [&str; 4] = ["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"];
const EOS_NAMES: [&str; 5] = [
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<eos>",
    "<|im_end|>",
];

impl TextEncoder {
    /// Loads `path`: a `tokenizer.json`, or a directory holding one (and optionally `tokenizer_config.json`,
    /// whose `bos_token`/`eos_token` then name BOS and EOS).
    pub fn load(
        path: &Path,
        bos: BosPolicy,
        append_eod: bool,
        parse_special_tokens: bool,
    ) -> anyhow::Result<Self> {
        let file: PathBuf = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        let bytes =
            std::fs::read(&file).with_context(|| format!("{}: read tokenizer", file.display()))?;
        let mut tokenizer = Tokenizer::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a tokenizer.json: {e}", file.display()))?;
        tokenizer.set_encode_special_tokens(!parse_special_tokens);
        let config = file.with_file_name("tokenizer_config.json");
        let (bos_id, eos_id) =
            special_ids(&tokenizer, config.is_file().then_some(config.as_path()))?;
        let info = TokenizerInfo {
            name: path.display().to_string(),
            sha256: sha256_hex(&bytes),
            vocab_size: tokenizer.get_vocab_size(true) as u64,
            bos_id,
            eos_id,
        };
        if bos == BosPolicy::Always && bos_id.is_none() {
            anyhow::bail!(
                "{}: --bos always, but the tokenizer has no BOS token (looked for {BOS_NAMES:?})",
                file.display()
            );
        }
        if append_eod && eos_id.is_none() {
            anyhow::bail!(
                "{}: --append-eod, but the tokenizer has no EOS token (looked for {EOS_NAMES:?})",
                file.display()
            );
        }
        Ok(Self {
            tokenizer,
            info,
            bos,
            append_eod,
        })
    }

    /// The tokenizer's identity.
    pub fn info(&self) -> &TokenizerInfo {
        &self.info
    }

    /// Encodes one document, replacing the contents of `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
        out.clear();
        let add_special_tokens = self.bos == BosPolicy::Tokenizer;
        let encoding = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
        if self.bos == BosPolicy::Always {
            out.push(self.info.bos_id.expect("checked in load"));
        }
        out.extend_from_slice(encoding.get_ids());
        if self.append_eod {
            out.push(self.info.eos_id.expect("checked in load"));
        }
        Ok(())
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// BOS and EOS ids: from `tokenizer_config.json` when present, else by the usual special-token names.
fn special_ids(
    tokenizer: &Tokenizer,
    config: Option<&Path>,
) -> anyhow::Result<(Option<u32>, Option<u32>)> {
    let specials = tokenizer.get_added_tokens_decoder();
    let by_name = |names: &[&str]| {
        names.iter().find_map(|n| {
            specials
                .iter()
                .find(|(_, t)| t.special && t.content == *n)
                .map(|(id, _)| *id)
        })
    };
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
            bos = tokenizer.token_to_id(&name);
        }
        if let Some(name) = token("eos_token") {
            eos = tokenizer.token_to_id(&name);
        }
    }
    Ok((bos, eos))
}
