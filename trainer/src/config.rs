//! flame's model config (`configs/transformer_*.json`, fla's `TransformerConfig` field names), with fla's
//! defaults for the fields a file leaves out.

use std::path::Path;

use serde::Deserialize;

/// The config file's fields that flame-train builds (fla's `TransformerConfig` names). Every other key
/// is checked by [`check_keys`] first.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: String,
    hidden_size: u32,
    num_hidden_layers: u32,
    num_heads: u32,
    #[serde(default)]
    num_kv_heads: Option<u32>,
    #[serde(default)]
    vocab_size: Option<u32>,
    #[serde(default)]
    hidden_ratio: Option<u32>,
    #[serde(default)]
    intermediate_size: Option<u32>,
    #[serde(default = "default_rope_theta")]
    rope_theta: Option<f64>,
    #[serde(default)]
    norm_eps: Option<f64>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    initializer_range: Option<f64>,
    #[serde(default)]
    qkv_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    max_position_embeddings: Option<u32>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<u32>,
}

#[allow(clippy::unnecessary_wraps)] // serde's default for an `Option` field
fn default_rope_theta() -> Option<f64> {
    Some(10000.0)
}

/// Keys that choose how fla computes, not what: any value is accepted.
const IMPLEMENTATION_SWITCHES: &[&str] = &[
    "use_cache",
    "fuse_norm",
    "fuse_swiglu",
    "fuse_cross_entropy",
    "fuse_linear_cross_entropy",
    "attn_mode",
];

/// Bookkeeping keys of a Hugging Face `config.json`: they describe the file, not the model.
const BOOKKEEPING: &[&str] = &[
    "architectures",
    "auto_map",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "_name_or_path",
];

/// Keys of fla's `TransformerConfig` that flame-train does not implement, with the one value at which
/// fla builds the model flame-train builds, and what another value would do.
const ONLY_AT: &[(&str, &str, &str)] = &[
    (
        "qk_norm",
        "false",
        "RMSNorm on each head's queries and keys",
    ),
    ("window_size", "null", "sliding-window attention"),
    ("use_l2warp", "false", "fla's L2-warp term in the loss"),
    (
        "attnres_block_size",
        "null",
        "attention-residual aggregation",
    ),
    (
        "elementwise_affine",
        "true",
        "norms without weights in fla's other models; its transformer ignores the key, so flame-train refuses to guess",
    ),
    (
        "attention_bias",
        "false",
        "nothing in fla (its transformer ignores the key; biases come from qkv_bias), so flame-train refuses to guess",
    ),
];

/// Refuses a key that would make fla build another model than flame-train does: one flame-train does
/// not implement away from its no-op value, or one that is not fla's at all (a typo trains silently
/// as something else).
fn check_keys(table: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    const BUILT: &[&str] = &[
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_heads",
        "num_kv_heads",
        "vocab_size",
        "hidden_ratio",
        "intermediate_size",
        "rope_theta",
        "norm_eps",
        "tie_word_embeddings",
        "initializer_range",
        "qkv_bias",
        "hidden_act",
        "max_position_embeddings",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
    ];
    for (key, value) in table {
        let key = key.as_str();
        if BUILT.contains(&key)
            || IMPLEMENTATION_SWITCHES.contains(&key)
            || BOOKKEEPING.contains(&key)
        {
            continue;
        }
        match ONLY_AT.iter().find(|(k, _, _)| *k == key) {
            Some((_, no_op, _)) if value.to_string().as_str() == *no_op => {}
            Some((_, no_op, what)) => {
                return Err(format!(
                    "{key}: {value} would make fla build {what}; flame-train builds only {key}: {no_op}"
                ));
            }
            None => {
                return Err(format!(
                    "{key}: not a key of fla's TransformerConfig; refused rather than ignored (fla would ignore it too, which hides typos)"
                ));
            }
        }
    }
    Ok(())
}

/// A transformer's shape, every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Model width.
    pub hidden_size: u32,
    /// Blocks.
    pub num_hidden_layers: u32,
    /// Query heads.
    pub num_heads: u32,
    /// Key/value heads (`num_heads` for MHA, fewer for GQA).
    pub num_kv_heads: u32,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// SwiGLU inner width.
    pub intermediate_size: u32,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Whether the output projection is the embedding.
    pub tie_word_embeddings: bool,
    /// Standard deviation of the initial weights.
    pub initializer_range: f64,
    /// Biases on the query, key and value projections (fla's `qkv_bias`; none on the output one).
    pub qkv_bias: bool,
    /// Longest position the model is meant for.
    pub max_position_embeddings: u32,
    /// fla's `pad_token_id`: the embedding's `padding_idx`, a row the embedding lookup never trains.
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence id.
    pub bos_token_id: u32,
    /// End-of-sequence id.
    pub eos_token_id: u32,
}

/// A config that cannot be trained here, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable or not JSON of the expected fields.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Readable, but not a model this trainer builds.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl ModelConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: name.clone(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|e| match e {
            ConfigError::Read { reason, .. } => ConfigError::Read {
                path: name.clone(),
                reason,
            },
            ConfigError::Unsupported { reason, .. } => ConfigError::Unsupported {
                path: name.clone(),
                reason,
            },
        })
    }

    /// Parses a config, applying fla's defaults.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let read = |e: serde_json::Error| ConfigError::Read {
            path: String::new(),
            reason: e.to_string(),
        };
        let table: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(read)?;
        let unsupported = |reason: String| {
            Err(ConfigError::Unsupported {
                path: String::new(),
                reason,
            })
        };
        if let Err(reason) = check_keys(&table) {
            return unsupported(reason);
        }
        let raw: RawConfig =
            serde_json::from_value(serde_json::Value::Object(table)).map_err(read)?;
        if raw.model_type != "transformer" {
            return unsupported(format!(
                "model_type {:?}: flame-train builds \"transformer\" models",
                raw.model_type
            ));
        }
        if let Some(act) = &raw.hidden_act
            && act != "swish"
            && act != "silu"
        {
            return unsupported(format!("hidden_act {act:?}: only swish (SiLU) is built"));
        }
        let Some(rope_theta) = raw.rope_theta else {
            return unsupported("rope_theta: null: fla's attention needs a rotary base".into());
        };
        let vocab_size = raw.vocab_size.unwrap_or(32000);
        if let Some(pad) = raw.pad_token_id
            && pad >= vocab_size
        {
            return unsupported(format!(
                "pad_token_id {pad} is outside the vocabulary of {vocab_size}"
            ));
        }
        let num_kv_heads = raw.num_kv_heads.unwrap_or(raw.num_heads);
        if raw.num_heads == 0
            || !raw.hidden_size.is_multiple_of(raw.num_heads)
            || num_kv_heads == 0
            || !raw.num_heads.is_multiple_of(num_kv_heads)
        {
            return unsupported(format!(
                "{} heads of {} kv heads do not divide hidden_size {}",
                raw.num_heads, num_kv_heads, raw.hidden_size
            ));
        }
        let ratio = raw.hidden_ratio.unwrap_or(4);
        // fla/modules/mlp.py: int(hidden · ratio · 2/3), rounded up to a multiple of 256.
        let intermediate_size = raw.intermediate_size.unwrap_or_else(|| {
            let inner = raw.hidden_size * ratio * 2 / 3;
            inner.div_ceil(256) * 256
        });
        Ok(Self {
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_heads: raw.num_heads,
            num_kv_heads,
            vocab_size,
            intermediate_size,
            rope_theta,
            norm_eps: raw.norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            initializer_range: raw.initializer_range.unwrap_or(0.02),
            qkv_bias: raw.qkv_bias.unwrap_or(false),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            pad_token_id: raw.pad_token_id,
            bos_token_id: raw.bos_token_id.unwrap_or(1),
            eos_token_id: raw.eos_token_id.unwrap_or(2),
        })
    }

    /// Width of one head.
    pub fn head_dim(&self) -> u32 {
        self.hidden_size / self.num_heads
    }

    /// Parameters: (all, embeddings).
    pub fn num_params(&self) -> (u64, u64) {
        let (h, i, v) = (
            u64::from(self.hidden_size),
            u64::from(self.intermediate_size),
            u64::from(self.vocab_size),
        );
        let kv = u64::from(self.num_kv_heads * self.head_dim());
        let biases = if self.qkv_bias { h + 2 * kv } else { 0 };
        let attention = h * h * 2 + 2 * h * kv + biases;
        let mlp = 3 * h * i;
        let norms = 2 * h;
        let per_layer = attention + mlp + norms;
        let embeddings = v * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        (
            u64::from(self.num_hidden_layers) * per_layer + embeddings + head + h,
            embeddings,
        )
    }

    /// Training FLOPs per token as flame counts them (`flame/tools/utils.py`):
    /// `6·(params − embedding params) + 12·layers·hidden·context_len`.
    pub fn flops_per_token(&self, context_len: u32) -> u64 {
        let (params, embeddings) = self.num_params();
        6 * (params - embeddings)
            + 12 * u64::from(self.num_hidden_layers)
                * u64::from(self.hidden_size)
                * u64::from(context_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> ModelConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs")
            .join(name);
        ModelConfig::load(&path).unwrap()
    }

    #[test]
    fn flames_configs_load_with_flas_defaults() {
        let small = config("transformer_340M.json");
        assert_eq!(
            (small.hidden_size, small.num_hidden_layers, small.num_heads),
            (1024, 24, 16)
        );
        assert_eq!(
            (
                small.num_kv_heads,
                small.intermediate_size,
                small.vocab_size
            ),
            (16, 2816, 32000)
        );
        assert!(!small.tie_word_embeddings);
        // ≈ 374M parameters with untied embeddings (../shared/notes/flame.md §3.1: 373.9M measured).
        let (params, _) = small.num_params();
        assert!((373_000_000..375_000_000).contains(&params), "{params}");
        let big = config("transformer_7B.json");
        assert_eq!((big.num_kv_heads, big.intermediate_size), (8, 14336));
        assert_eq!(config("transformer_1B.json").intermediate_size, 5632);
    }

    #[test]
    fn configs_this_trainer_cannot_build_are_refused() {
        let base = r#"{"model_type": "transformer", "hidden_size": 64, "num_hidden_layers": 2, "num_heads": 4"#;
        assert!(ModelConfig::from_json(&format!("{base}}}")).is_ok());
        for (extra, reason) in [
            (r#", "num_kv_heads": 3"#, "heads"),
            (r#", "hidden_act": "gelu""#, "hidden_act"),
        ] {
            let err = ModelConfig::from_json(&format!("{base}{extra}}}")).unwrap_err();
            assert!(err.to_string().contains(reason), "{err}");
        }
        let err = ModelConfig::from_json(
            r#"{"model_type": "gla", "hidden_size": 64, "num_hidden_layers": 2, "num_heads": 4}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("gla"), "{err}");
        assert!(ModelConfig::from_json("{").is_err());
    }

    /// Issue 16: a key that would make fla build another model is refused with its name, never trained
    /// as something else; the same keys at their no-op values, and fla's implementation switches, load.
    #[test]
    fn keys_that_would_change_flas_model_are_refused_by_name() {
        let base = r#"{"model_type": "transformer", "hidden_size": 64, "num_hidden_layers": 2, "num_heads": 4"#;
        let load = |extra: &str| ModelConfig::from_json(&format!("{base}, {extra}}}"));
        for refused in [
            r#""qk_norm": true"#,
            r#""window_size": 2048"#,
            r#""use_l2warp": true"#,
            r#""elementwise_affine": false"#,
            r#""attention_bias": true"#,
            r#""attnres_block_size": 4"#,
            r#""rope_theta": null"#,
            r#""pad_token_id": 40000"#,
            r#""num_experts": 8"#,
        ] {
            let key = refused.split('"').nth(1).unwrap();
            let err = load(refused).expect_err(refused).to_string();
            assert!(err.contains(key), "{refused}: {err}");
        }
        for accepted in [
            r#""qk_norm": false, "window_size": null, "use_l2warp": false, "elementwise_affine": true"#,
            r#""attention_bias": false, "attnres_block_size": null"#,
            r#""fuse_norm": false, "fuse_swiglu": true, "fuse_cross_entropy": false, "fuse_linear_cross_entropy": true"#,
            r#""use_cache": true, "attn_mode": "chunk", "architectures": ["TransformerForCausalLM"], "torch_dtype": "bfloat16""#,
        ] {
            load(accepted).expect(accepted);
        }
        // Implemented: biases on q, k and v (fla's qkv_bias), and the embedding's padding row.
        let c = load(r#""qkv_bias": true, "pad_token_id": 2"#).unwrap();
        assert!(c.qkv_bias);
        assert_eq!(c.pad_token_id, Some(2));
    }

    /// Every transformer config flame ships loads as it is (`../shared/reference/flame-configs`, the
    /// copies in `configs/`).
    #[test]
    fn flames_own_transformer_configs_load_unchanged() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for dir in ["configs", "../shared/reference/flame-configs"] {
            for name in [
                "transformer_340M.json",
                "transformer_1B.json",
                "transformer_7B.json",
            ] {
                let path = root.join(dir).join(name);
                ModelConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        // flame's 1B config sets pad_token_id 2: fla never trains that embedding row.
        let one_b = config("transformer_1B.json");
        assert_eq!(one_b.pad_token_id, Some(2));
    }
}
