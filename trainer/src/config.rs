//! flame's model config (`configs/transformer_*.json`, fla's `TransformerConfig` field names), with fla's
//! defaults for the fields a file leaves out.

use std::path::Path;

use serde::Deserialize;

/// The config file as written (unknown fields such as `fuse_norm` or `use_cache` are accepted: they
/// select kernels in fla, not the model).
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
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    norm_eps: Option<f64>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    initializer_range: Option<f64>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    max_position_embeddings: Option<u32>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<u32>,
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
    /// Biases on the attention projections.
    pub attention_bias: bool,
    /// Longest position the model is meant for.
    pub max_position_embeddings: u32,
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
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| ConfigError::Read {
            path: String::new(),
            reason: e.to_string(),
        })?;
        let unsupported = |reason: String| {
            Err(ConfigError::Unsupported {
                path: String::new(),
                reason,
            })
        };
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
            vocab_size: raw.vocab_size.unwrap_or(32000),
            intermediate_size,
            rope_theta: raw.rope_theta.unwrap_or(10000.0),
            norm_eps: raw.norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            initializer_range: raw.initializer_range.unwrap_or(0.02),
            attention_bias: raw.attention_bias.unwrap_or(false),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
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
        let attention = h * h * 2 + 2 * h * kv;
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
}
