//! flame's model configs (`configs/*.json`: fla 0.6.0's config classes and field names, fla's defaults
//! for the fields a file leaves out): the shell every architecture shares ([`ModelConfig`]) and its token
//! mixer ([`Mixer`]: attention, GLA, DeltaNet or Gated DeltaNet).
//!
//! A key is built, or accepted because it only chooses how fla computes (`fuse_norm`, `use_cache`, …),
//! or accepted at the one value at which fla builds what flame-train builds (`qk_norm: false`, …);
//! anything else is refused with its name, so that no config trains silently as a different model. Keys
//! fla does not know are refused too (fla would ignore them, which hides typos).

use std::cell::RefCell;
use std::path::Path;

use serde_json::{Map, Value};

/// A model's shape, every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// fla's `model_type`: `transformer`, `gla`, `delta_net` or `gated_deltanet`; or `gpt2`.
    pub model_type: String,
    /// Model width.
    pub hidden_size: u32,
    /// Blocks.
    pub num_hidden_layers: u32,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// The MLP's inner width (fla's `GatedMLP` with SwiGLU; GPT-2's `n_inner` with GELU).
    pub intermediate_size: u32,
    /// The norms' epsilon (every norm of the model: RMSNorm, or GPT-2's LayerNorm).
    pub norm_eps: f64,
    /// Whether the output projection is the embedding.
    pub tie_word_embeddings: bool,
    /// Standard deviation of the initial weights.
    pub initializer_range: f64,
    /// fla's `pad_token_id`: the embedding's `padding_idx`, a row the embedding lookup never trains.
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence id.
    pub bos_token_id: u32,
    /// End-of-sequence id.
    pub eos_token_id: u32,
    /// The token mixer of every block.
    pub mixer: Mixer,
    /// The file's keys as written, for the export's `config.json` of fla's own models and GPT-2.
    pub keys: Map<String, Value>,
}

/// The token mixer of a block.
#[derive(Clone, Debug, PartialEq)]
pub enum Mixer {
    /// Softmax attention with RoPE (`transformer`).
    Attention(AttentionConfig),
    /// Gated linear attention (`gla`).
    Gla(GlaConfig),
    /// The delta rule (`delta_net`), or the gated delta rule (`gated_deltanet`) when `decay` is set.
    DeltaRule(DeltaRuleConfig),
    /// GPT-2's attention (`gpt2`), which also sets GPT-2's block apart: LayerNorm with biases, a GELU
    /// MLP with biases, learned absolute positions.
    Gpt2(Gpt2Config),
}

impl Mixer {
    /// Whether the mixer is linear attention (GLA, the delta rules), not softmax attention.
    pub fn is_linear(&self) -> bool {
        matches!(self, Self::Gla(_) | Self::DeltaRule(_))
    }
}

/// Hugging Face's `GPT2Config` (`transformers/models/gpt2/configuration_gpt2.py`), as far as it is not
/// in [`ModelConfig`]: multi-head attention with biases and the query, key and value projections fused
/// (`c_attn`), scores scaled by `1/√head_dim`, no dropout.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Config {
    /// Heads (`n_head`).
    pub num_heads: u32,
    /// Learned positions (`n_positions`): no document or sample may be longer.
    pub n_positions: u32,
    /// The MLP's activation (`activation_function`).
    pub activation: Gelu,
}

/// GELU as `transformers` names its forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation (GPT-2's own).
    Tanh,
    /// `gelu`: the exact form, with erf.
    Erf,
}

impl Gelu {
    /// libtorch's name of the form (`gelu`'s `approximate` argument).
    pub fn approximate(self) -> &'static str {
        match self {
            Self::Tanh => "tanh",
            Self::Erf => "none",
        }
    }
}

/// fla's `TransformerConfig` attention.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Query heads.
    pub num_heads: u32,
    /// Key/value heads (`num_heads` for MHA, fewer for GQA).
    pub num_kv_heads: u32,
    /// Biases on the query, key and value projections (fla's `qkv_bias`; none on the output one).
    pub qkv_bias: bool,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest position the model is meant for.
    pub max_position_embeddings: u32,
    /// fla's `window_size` (a Mistral checkpoint's `sliding_window`): each token attends to itself and
    /// the `window_size − 1` before it. flame-train's attention always sees the whole sample or
    /// document, the same model while none is longer than the window: a run whose attention span is
    /// longer is refused (`data::check_job`).
    pub window_size: Option<u32>,
}

/// fla's `GatedLinearAttention` (`fla/layers/gla.py`).
#[derive(Clone, Debug, PartialEq)]
pub struct GlaConfig {
    /// Heads.
    pub num_heads: u32,
    /// Width of all heads' keys (`round(hidden_size · expand_k)`).
    pub key_dim: u32,
    /// Width of all heads' values (`round(hidden_size · expand_v)`).
    pub value_dim: u32,
    /// The output gate `g_proj` (swish) in the output norm.
    pub use_output_gate: bool,
    /// Whether the output norm is fla's fused gated norm, named `g_norm_swish_gate` (`fuse_norm` with
    /// the output gate), or `g_norm`.
    pub fused_gate_norm: bool,
    /// Short convolutions (SiLU) on q, k and v, of this many taps.
    pub short_conv: Option<u32>,
    /// Floor of the log gate (`clamp_min`).
    pub clamp_min: Option<f64>,
}

/// fla's `DeltaNet` (`fla/layers/delta_net.py`) and `GatedDeltaNet` (`fla/layers/gated_deltanet.py`).
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaRuleConfig {
    /// Heads.
    pub num_heads: u32,
    /// Width of one head's keys.
    pub head_k_dim: u32,
    /// Width of one head's values.
    pub head_v_dim: u32,
    /// Short convolutions (SiLU) on q, k and v, of this many taps; without, SiLU on the projections.
    pub short_conv: Option<u32>,
    /// `b_proj` and β = sigmoid(b); without, β = 1.
    pub use_beta: bool,
    /// β doubled (`allow_neg_eigval`).
    pub allow_neg_eigval: bool,
    /// The output gate `g_proj` in the output norm, with its activation.
    pub output_gate: Option<GateActivation>,
    /// Gated DeltaNet's Mamba2-style decay (`A_log`, `dt_bias`, `a_proj`).
    pub decay: bool,
}

impl DeltaRuleConfig {
    /// The widths of the short convolutions flame-train runs, if any: Gated DeltaNet's q, k and v side
    /// by side (one convolution, as fla's `GatedDeltaNet` runs them on whole sequences), else the
    /// keys' width (q's and k's) and the values'.
    pub fn conv_widths(&self) -> Vec<u32> {
        let (k, v) = (
            self.num_heads * self.head_k_dim,
            self.num_heads * self.head_v_dim,
        );
        match (self.short_conv, self.decay) {
            (None, _) => Vec::new(),
            (Some(_), true) => vec![2 * k + v],
            (Some(_), false) => vec![k, v],
        }
    }
}

/// The activation of an output gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateActivation {
    /// `g · sigmoid(g)`.
    Swish,
    /// `sigmoid(g)`.
    Sigmoid,
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

/// Tables of [`ONLY_AT`]'s shape that apply to a model type.
type NoOps = &'static [&'static [(&'static str, &'static str, &'static str)]];

/// Keys flame-train does not implement, with the one value at which fla builds the model flame-train
/// builds, and what another value would do: every model's, then each `model_type`'s.
const ONLY_AT: &[(&str, &str, &str)] = &[
    ("use_l2warp", "false", "fla's L2-warp term in the loss"),
    (
        "attnres_block_size",
        "null",
        "attention-residual aggregation",
    ),
    (
        "elementwise_affine",
        "true",
        "norms without weights (fla's transformer ignores the key; flame-train refuses to guess)",
    ),
];
const ONLY_AT_TRANSFORMER: &[(&str, &str, &str)] = &[
    (
        "qk_norm",
        "false",
        "RMSNorm on each head's queries and keys",
    ),
    ("window_size", "", ""),
    (
        "attention_bias",
        "false",
        "nothing in fla (its transformer ignores the key; biases come from qkv_bias), so flame-train refuses to guess",
    ),
];
const ONLY_AT_LINEAR: &[(&str, &str, &str)] = &[
    (
        "attn",
        "null",
        "softmax-attention layers among the linear ones",
    ),
    ("max_position_embeddings", "", ""),
];
const ONLY_AT_GLA: &[(&str, &str, &str)] = &[
    ("feature_map", "null", "a feature map on q and k"),
    (
        "use_gk",
        "true",
        "nothing in fla 0.6.0 (it ignores the key), so flame-train refuses to guess",
    ),
    (
        "use_gv",
        "false",
        "nothing in fla 0.6.0 (it ignores the key), so flame-train refuses to guess",
    ),
];
const ONLY_AT_DELTA_NET: &[(&str, &str, &str)] = &[
    ("qk_activation", "\"silu\"", "another activation on q and k"),
    ("qk_norm", "\"l2\"", "another normalisation of q and k"),
    (
        "use_output_norm",
        "true",
        "nothing in fla 0.6.0 (it ignores the key), so flame-train refuses to guess",
    ),
];
/// `GPT2Config`'s keys that flame-train does not build other than at one value, or that only
/// `GPT2DoubleHeadsModel` and generation read (accepted at any value).
const ONLY_AT_GPT2: &[(&str, &str, &str)] = &[
    (
        "scale_attn_weights",
        "true",
        "attention scores not scaled by 1/√head_dim",
    ),
    (
        "scale_attn_by_inverse_layer_idx",
        "false",
        "attention scores also scaled by 1/(layer index + 1)",
    ),
    ("add_cross_attention", "false", "cross-attention layers"),
    ("reorder_and_upcast_attn", "", ""),
    ("n_ctx", "", ""),
    ("pad_token_id", "", ""),
    ("summary_type", "", ""),
    ("summary_use_proj", "", ""),
    ("summary_activation", "", ""),
    ("summary_proj_to_labels", "", ""),
    ("summary_first_dropout", "", ""),
    ("task_specific_params", "", ""),
];
const ONLY_AT_GATED_DELTANET: &[(&str, &str, &str)] =
    &[("num_v_heads", "null", "grouped value heads (GVA)")];

/// The keys of a config file, read once each; the ones left unread at the end are checked against the
/// switches, bookkeeping and no-op values, and anything else is refused.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    read: RefCell<Vec<&'a str>>,
}

impl<'a> Keys<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        Self {
            map,
            read: RefCell::new(Vec::new()),
        }
    }

    /// The value of `key`, unless absent or `null`.
    fn get(&self, key: &'a str) -> Option<&'a Value> {
        self.read.borrow_mut().push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn typed<T>(
        &self,
        key: &'a str,
        what: &str,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, String> {
        self.get(key)
            .map(|v| read(v).ok_or_else(|| format!("{key}: {v} is not {what}")))
            .transpose()
    }

    fn u32(&self, key: &'a str) -> Result<Option<u32>, String> {
        self.typed(key, "a count", |v| {
            v.as_u64().and_then(|n| u32::try_from(n).ok())
        })
    }

    fn f64(&self, key: &'a str) -> Result<Option<f64>, String> {
        self.typed(key, "a number", Value::as_f64)
    }

    fn bool(&self, key: &'a str) -> Result<Option<bool>, String> {
        self.typed(key, "true or false", Value::as_bool)
    }

    fn str(&self, key: &'a str) -> Result<Option<&'a str>, String> {
        self.typed(key, "a string", Value::as_str)
    }

    fn required(&self, key: &'a str) -> Result<u32, String> {
        self.u32(key)?.ok_or_else(|| format!("{key} is missing"))
    }

    /// Refuses what was not read: a key fla would build differently, or one that is not fla's.
    fn check_rest(&self, only_at: NoOps) -> Result<(), String> {
        let read = self.read.borrow();
        for (key, value) in self.map {
            let key = key.as_str();
            if read.contains(&key)
                || IMPLEMENTATION_SWITCHES.contains(&key)
                || BOOKKEEPING.contains(&key)
            {
                continue;
            }
            match only_at
                .iter()
                .flat_map(|t| t.iter())
                .find(|(k, _, _)| *k == key)
            {
                // Accepted at any value: it changes nothing in this model.
                Some((_, "", _)) => {}
                Some((_, no_op, _)) if value.to_string().as_str() == *no_op => {}
                Some((_, no_op, what)) => {
                    return Err(format!(
                        "{key}: {value} would make fla build {what}; flame-train builds only {key}: {no_op}"
                    ));
                }
                None => {
                    return Err(format!(
                        "{key}: not a key of fla's config for this model; refused rather than ignored (fla would ignore it, which hides typos)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A Llama or Mistral `config.json` (`transformers`' names) as fla's `transformer` config: the same
/// model under fla's names. Keys that would change the model and have no counterpart are refused by
/// name; those that only describe the file (`architectures`, `torch_dtype`, ...) or hold the value that
/// changes nothing (no biases, no dropout, no RoPE scaling) are dropped. `sliding_window` is fla's
/// `window_size`; `transformers` 5's `rope_parameters` give `rope_theta`.
fn from_llama(hf: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    const RENAMED: &[(&str, &str)] = &[
        ("num_attention_heads", "num_heads"),
        ("num_key_value_heads", "num_kv_heads"),
        ("rms_norm_eps", "norm_eps"),
    ];
    const SAME: &[&str] = &[
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "vocab_size",
        "tie_word_embeddings",
        "initializer_range",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "rope_theta",
        "max_position_embeddings",
        "hidden_act",
    ];
    const DESCRIBE: &[&str] = &[
        "model_type",
        "architectures",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "use_cache",
        "head_dim",
    ];
    const OFF: &[(&str, &str)] = &[
        ("attention_bias", "false"),
        ("mlp_bias", "false"),
        ("attention_dropout", "0.0"),
        ("pretraining_tp", "1"),
        ("rope_scaling", "null"),
    ];
    let mut fla = Map::new();
    fla.insert("model_type".into(), Value::from("transformer"));
    for (key, value) in hf {
        if let Some((_, ours)) = RENAMED.iter().find(|(theirs, _)| theirs == key) {
            fla.insert((*ours).into(), value.clone());
        } else if key == "sliding_window" {
            if !value.is_null() {
                fla.insert("window_size".into(), value.clone());
            }
        } else if key == "rope_parameters" {
            fla.insert("rope_theta".into(), rope_parameters(value)?);
        } else if SAME.contains(&key.as_str()) {
            fla.insert(key.clone(), value.clone());
        } else if let Some((_, off)) = OFF.iter().find(|(k, _)| k == key) {
            let wanted: Value = serde_json::from_str(off).map_err(|e| e.to_string())?;
            let same =
                *value == wanted || value.as_f64().is_some_and(|v| Some(v) == wanted.as_f64());
            if !same {
                return Err(format!(
                    "{key} {value}: flame-train's transformer has {key} {off} only"
                ));
            }
        } else if !DESCRIBE.contains(&key.as_str()) {
            return Err(format!(
                "{key}: a key of a Llama/Mistral config.json that flame-train does not map"
            ));
        }
    }
    let heads = hf.get("num_attention_heads").and_then(Value::as_u64);
    let hidden = hf.get("hidden_size").and_then(Value::as_u64);
    if let (Some(head_dim), Some(heads), Some(hidden)) =
        (hf.get("head_dim").and_then(Value::as_u64), heads, hidden)
        && head_dim * heads != hidden
    {
        return Err(format!(
            "head_dim {head_dim}: flame-train's heads are hidden_size / num_attention_heads = {}",
            hidden / heads.max(1)
        ));
    }
    Ok(fla)
}

/// The RoPE base of `transformers` 5's `rope_parameters` (`{"rope_type": "default", "rope_theta": …}`);
/// another `rope_type` (`llama3`, `yarn`, …) scales the frequencies, which flame-train does not.
fn rope_parameters(value: &Value) -> Result<Value, String> {
    let kind = value
        .get("rope_type")
        .and_then(Value::as_str)
        .unwrap_or("default");
    if kind != "default" {
        return Err(format!(
            "rope_parameters: rope_type {kind:?}: flame-train's transformer has plain RoPE only (rope_type \"default\")"
        ));
    }
    value
        .get("rope_theta")
        .filter(|theta| theta.is_number())
        .cloned()
        .ok_or_else(|| format!("rope_parameters {value}: no rope_theta"))
}

impl ModelConfig {
    /// Reads a config file.
    ///
    /// # Errors
    /// When it cannot be read, or is not a model flame-train builds.
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
    ///
    /// # Errors
    /// When it is not JSON, or not a model flame-train builds.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let map: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| ConfigError::Read {
                path: String::new(),
                reason: e.to_string(),
            })?;
        Self::from_keys(map).map_err(|reason| ConfigError::Unsupported {
            path: String::new(),
            reason,
        })
    }

    fn from_keys(map: Map<String, Value>) -> Result<Self, String> {
        let map = match map.get("model_type").and_then(Value::as_str) {
            Some("llama" | "mistral") => from_llama(&map)?,
            _ => map,
        };
        let mut config = Self::read(&Keys::new(&map))?;
        config.keys = map;
        Ok(config)
    }

    /// The config `keys` describe; every key is read or checked.
    fn read(keys: &Keys<'_>) -> Result<Self, String> {
        let model_type = keys
            .str("model_type")?
            .ok_or("model_type is missing")?
            .to_owned();
        if model_type == "gpt2" {
            let config = gpt2(keys)?;
            keys.check_rest(&[ONLY_AT_GPT2])?;
            return Ok(config);
        }
        let hidden_size = keys.required("hidden_size")?;
        let (mixer, only_at): (Mixer, NoOps) = match model_type.as_str() {
            "transformer" => (
                Mixer::Attention(attention(keys, hidden_size)?),
                &[ONLY_AT, ONLY_AT_TRANSFORMER],
            ),
            "gla" => (
                Mixer::Gla(gla(keys, hidden_size)?),
                &[ONLY_AT, ONLY_AT_LINEAR, ONLY_AT_GLA],
            ),
            "delta_net" => (
                Mixer::DeltaRule(delta_net(keys, hidden_size)?),
                &[ONLY_AT, ONLY_AT_LINEAR, ONLY_AT_DELTA_NET],
            ),
            "gated_deltanet" => (
                Mixer::DeltaRule(gated_deltanet(keys)?),
                &[ONLY_AT, ONLY_AT_LINEAR, ONLY_AT_GATED_DELTANET],
            ),
            other => {
                return Err(format!(
                    "model_type {other:?}: flame-train builds \"transformer\", \"gla\", \"delta_net\", \"gated_deltanet\" and \"gpt2\""
                ));
            }
        };
        let config = shell(keys, model_type, hidden_size, mixer)?;
        keys.check_rest(only_at)?;
        Ok(config)
    }

    /// The attention of a `transformer`.
    ///
    /// # Panics
    /// For another model type: callers hold a transformer's config.
    pub fn attention(&self) -> &AttentionConfig {
        match &self.mixer {
            Mixer::Attention(a) => a,
            _ => panic!("{} has no softmax attention", self.model_type),
        }
    }

    /// GPT-2's attention and shape, for a `gpt2`.
    pub fn gpt2(&self) -> Option<&Gpt2Config> {
        match &self.mixer {
            Mixer::Gpt2(g) => Some(g),
            _ => None,
        }
    }

    /// Parameters: (all, embeddings: the token embedding and GPT-2's positions).
    pub fn num_params(&self) -> (u64, u64) {
        let (h, v) = (u64::from(self.hidden_size), u64::from(self.vocab_size));
        let (matrices, others) = self.mixer_params();
        let positions = self.gpt2().map_or(0, |g| u64::from(g.n_positions));
        // RMSNorm has a weight, GPT-2's LayerNorm a weight and a bias.
        let norm = if positions > 0 { 2 * h } else { h };
        let per_layer = matrices + others + self.mlp_params() + 2 * norm;
        let embeddings = (v + positions) * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        (
            u64::from(self.num_hidden_layers) * per_layer + embeddings + head + norm,
            embeddings,
        )
    }

    fn mlp_params(&self) -> u64 {
        let (h, i) = (
            u64::from(self.hidden_size),
            u64::from(self.intermediate_size),
        );
        match self.mixer {
            // `c_fc` and `c_proj` with their biases.
            Mixer::Gpt2(_) => 2 * h * i + i + h,
            _ => 3 * h * i,
        }
    }

    /// Parameters of one block's token mixer: (matrices of its linear layers, the rest: biases,
    /// convolution taps, norm weights, decay parameters).
    fn mixer_params(&self) -> (u64, u64) {
        let h = u64::from(self.hidden_size);
        match &self.mixer {
            Mixer::Attention(a) => {
                let kv = u64::from(a.num_kv_heads * (self.hidden_size / a.num_heads));
                let biases = if a.qkv_bias { h + 2 * kv } else { 0 };
                (2 * h * h + 2 * h * kv, biases)
            }
            Mixer::Gla(g) => {
                let (k, v) = (u64::from(g.key_dim), u64::from(g.value_dim));
                let gate = if g.use_output_gate { v * h } else { 0 };
                let conv = g.short_conv.map_or(0, |w| u64::from(w) * (2 * k + v));
                // q, k, v, o, the output gate and the low-rank (16) forget gate; its bias, the
                // convolutions and the norm over one head's values.
                (
                    2 * k * h + 2 * v * h + gate + 16 * h + 16 * k,
                    k + conv + v / u64::from(g.num_heads),
                )
            }
            Mixer::DeltaRule(d) => {
                let heads = u64::from(d.num_heads);
                let (k, v) = (
                    heads * u64::from(d.head_k_dim),
                    heads * u64::from(d.head_v_dim),
                );
                let gate = if d.output_gate.is_some() { v * h } else { 0 };
                let beta = if d.use_beta { heads * h } else { 0 };
                let (a_proj, a_log_dt_bias) = if d.decay {
                    (heads * h, 2 * heads)
                } else {
                    (0, 0)
                };
                let conv = d.short_conv.map_or(0, |w| u64::from(w) * (2 * k + v));
                (
                    2 * k * h + 2 * v * h + gate + beta + a_proj,
                    a_log_dt_bias + conv + u64::from(d.head_v_dim),
                )
            }
            // `c_attn` (q, k and v) and `c_proj`, with their biases.
            Mixer::Gpt2(_) => (4 * h * h, 4 * h),
        }
    }

    /// Training FLOPs per token (forward and backward: three times the forward's, two per
    /// multiply-add), by what each architecture computes. The transformer keeps flame's (and
    /// torchtitan's) count, `6·(parameters − embeddings) + 12·layers·hidden·context_len`. That count
    /// gives linear models the attention term and the embedding lookup (flame#7: over 100% MFU), so
    /// theirs is `layers · (6·(matrix parameters of the block) + convolutions + mixing) + 6·hidden·vocab`
    /// (the output layer; the lookup costs nothing), with per token and head, chunk C = 64 (tiles counted
    /// whole as the kernels compute them; constant in the context):
    /// - GLA: `6·(2·dk·dv + C·dk + C·dv)` (state update and read, intra-chunk `QKᵀ` and `AV`);
    /// - DeltaNet, Gated DeltaNet: `6·(3·dk·dv + 3·C·dk + 2·C·dv) + 2·C²` (`KKᵀ`, `W`, `U`, `W·S`,
    ///   `KᵀV`, `Q·S`, `QKᵀ`, `A·V`, and the triangular solve);
    /// - short convolutions: `6 · taps · (2·dk + dv)`.
    ///
    /// For flame's 340M configs at context 2048 this is 1.32–1.36× below flame's count (1.10× for Gated
    /// DeltaNet's).
    ///
    /// GPT-2 has the transformer's count with its output layer, which is the (tied) embedding:
    /// `6·(parameters − embeddings + hidden·vocab) + 12·layers·hidden·context_len` (nanoGPT's and
    /// PaLM's, the learned positions left out as a lookup).
    pub fn flops_per_token(&self, context_len: u32) -> u64 {
        const C: u64 = 64;
        let (h, v) = (u64::from(self.hidden_size), u64::from(self.vocab_size));
        let layers = u64::from(self.num_hidden_layers);
        let attention = 12 * layers * h * u64::from(context_len);
        let (heads, dk, dv, short_conv) = match &self.mixer {
            Mixer::Attention(_) => {
                let (params, embeddings) = self.num_params();
                return 6 * (params - embeddings) + attention;
            }
            Mixer::Gpt2(_) => {
                let (params, embeddings) = self.num_params();
                let tied_head = if self.tie_word_embeddings { h * v } else { 0 };
                return 6 * (params - embeddings + tied_head) + attention;
            }
            Mixer::Gla(g) => {
                let heads = u64::from(g.num_heads);
                (
                    heads,
                    u64::from(g.key_dim) / heads,
                    u64::from(g.value_dim) / heads,
                    g.short_conv,
                )
            }
            Mixer::DeltaRule(d) => (
                u64::from(d.num_heads),
                u64::from(d.head_k_dim),
                u64::from(d.head_v_dim),
                d.short_conv,
            ),
        };
        let mixing = match &self.mixer {
            Mixer::Gla(_) => 6 * (2 * dk * dv + C * dk + C * dv),
            Mixer::Attention(_) | Mixer::Gpt2(_) => unreachable!("returned above"),
            Mixer::DeltaRule(_) => 6 * (3 * dk * dv + 3 * C * dk + 2 * C * dv) + 2 * C * C,
        };
        let conv = short_conv.map_or(0, |w| 6 * u64::from(w) * (2 * dk + dv));
        let (matrices, _) = self.mixer_params();
        layers * (6 * (matrices + self.mlp_params()) + heads * (mixing + conv)) + 6 * h * v
    }
}

/// The fields every model has, with fla's defaults.
fn shell(
    keys: &Keys<'_>,
    model_type: String,
    hidden_size: u32,
    mixer: Mixer,
) -> Result<ModelConfig, String> {
    let num_hidden_layers = keys.required("num_hidden_layers")?;
    if let Some(act) = keys.str("hidden_act")?
        && act != "swish"
        && !(act == "silu" && model_type == "transformer")
    {
        return Err(format!(
            "hidden_act {act:?}: only swish (fla's GatedMLP with SwiGLU) is built"
        ));
    }
    let ratio = keys.u32("hidden_ratio")?.unwrap_or(4);
    // fla/modules/mlp.py: int(hidden · ratio · 2/3), rounded up to a multiple of 256.
    let intermediate_size = keys.u32("intermediate_size")?.unwrap_or_else(|| {
        let inner = hidden_size * ratio * 2 / 3;
        inner.div_ceil(256) * 256
    });
    let vocab_size = keys.u32("vocab_size")?.unwrap_or(32000);
    let pad_token_id = keys.u32("pad_token_id")?;
    if let Some(pad) = pad_token_id
        && pad >= vocab_size
    {
        return Err(format!(
            "pad_token_id {pad} is outside the vocabulary of {vocab_size}"
        ));
    }
    Ok(ModelConfig {
        model_type,
        hidden_size,
        num_hidden_layers,
        vocab_size,
        intermediate_size,
        norm_eps: keys.f64("norm_eps")?.unwrap_or(1e-6),
        tie_word_embeddings: keys.bool("tie_word_embeddings")?.unwrap_or(false),
        initializer_range: keys.f64("initializer_range")?.unwrap_or(0.02),
        pad_token_id,
        bos_token_id: keys.u32("bos_token_id")?.unwrap_or(1),
        eos_token_id: keys.u32("eos_token_id")?.unwrap_or(2),
        mixer,
        keys: Map::new(),
    })
}

/// fla's `TransformerConfig` attention keys.
fn attention(keys: &Keys<'_>, hidden_size: u32) -> Result<AttentionConfig, String> {
    let num_heads = keys.required("num_heads")?;
    let num_kv_heads = keys.u32("num_kv_heads")?.unwrap_or(num_heads);
    if num_heads == 0
        || !hidden_size.is_multiple_of(num_heads)
        || num_kv_heads == 0
        || !num_heads.is_multiple_of(num_kv_heads)
    {
        return Err(format!(
            "{num_heads} heads of {num_kv_heads} kv heads do not divide hidden_size {hidden_size}"
        ));
    }
    // A `null` rope_theta is an explicit value in fla, not the default.
    let rope_theta = match keys.map.get("rope_theta") {
        Some(Value::Null) => {
            return Err("rope_theta: null: fla's attention needs a rotary base".into());
        }
        _ => keys.f64("rope_theta")?.unwrap_or(10000.0),
    };
    Ok(AttentionConfig {
        num_heads,
        num_kv_heads,
        qkv_bias: keys.bool("qkv_bias")?.unwrap_or(false),
        rope_theta,
        max_position_embeddings: keys.u32("max_position_embeddings")?.unwrap_or(2048),
        window_size: keys.u32("window_size")?,
    })
}

/// `round(hidden · expand)`, which fla asserts is whole.
fn expanded(
    keys: &Keys<'_>,
    key: &'static str,
    hidden_size: u32,
    default: f64,
) -> Result<u32, String> {
    let expand = keys.f64(key)?.unwrap_or(default);
    let dim = f64::from(hidden_size) * expand;
    if dim.fract() != 0.0 || dim <= 0.0 || dim > f64::from(u32::MAX) {
        return Err(format!(
            "{key} {expand} × hidden_size {hidden_size} is not a whole width"
        ));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole and in range
    Ok(dim as u32)
}

/// Heads (fla's `default` when absent) that divide `dims` (each `(name, width)`).
fn heads(keys: &Keys<'_>, default: u32, dims: &[(&str, u32)]) -> Result<u32, String> {
    let num_heads = keys.u32("num_heads")?.unwrap_or(default);
    for (name, dim) in dims {
        if num_heads == 0 || !dim.is_multiple_of(num_heads) {
            return Err(format!("{num_heads} heads do not divide {name} {dim}"));
        }
    }
    Ok(num_heads)
}

/// The short convolutions: `use_short_conv` (default `default`) with `conv_size` taps (default 4).
fn short_conv(keys: &Keys<'_>, default: bool) -> Result<Option<u32>, String> {
    let size = keys.u32("conv_size")?.unwrap_or(4);
    if size == 0 {
        return Err("conv_size 0: a convolution needs a tap".into());
    }
    Ok(keys
        .bool("use_short_conv")?
        .unwrap_or(default)
        .then_some(size))
}

/// fla's `GLAConfig` (`fla/models/gla/configuration_gla.py`).
fn gla(keys: &Keys<'_>, hidden_size: u32) -> Result<GlaConfig, String> {
    let key_dim = expanded(keys, "expand_k", hidden_size, 0.5)?;
    let value_dim = expanded(keys, "expand_v", hidden_size, 1.0)?;
    let num_heads = heads(keys, 4, &[("key_dim", key_dim), ("value_dim", value_dim)])?;
    if keys.u32("num_kv_heads")?.is_some_and(|n| n != num_heads) {
        return Err(
            "num_kv_heads: grouped keys and values (GQA) in GLA are not built; use num_kv_heads: null"
                .into(),
        );
    }
    let use_output_gate = keys.bool("use_output_gate")?.unwrap_or(true);
    let fuse_norm = keys.bool("fuse_norm")?.unwrap_or(true);
    Ok(GlaConfig {
        num_heads,
        key_dim,
        value_dim,
        use_output_gate,
        fused_gate_norm: use_output_gate && fuse_norm,
        short_conv: short_conv(keys, false)?,
        clamp_min: keys.f64("clamp_min")?,
    })
}

/// fla's `DeltaNetConfig` (`fla/models/delta_net/configuration_delta_net.py`).
fn delta_net(keys: &Keys<'_>, hidden_size: u32) -> Result<DeltaRuleConfig, String> {
    let key_dim = expanded(keys, "expand_k", hidden_size, 1.0)?;
    let value_dim = expanded(keys, "expand_v", hidden_size, 1.0)?;
    let num_heads = heads(keys, 16, &[("key_dim", key_dim), ("value_dim", value_dim)])?;
    Ok(DeltaRuleConfig {
        num_heads,
        head_k_dim: key_dim / num_heads,
        head_v_dim: value_dim / num_heads,
        short_conv: short_conv(keys, true)?,
        use_beta: keys.bool("use_beta")?.unwrap_or(true),
        allow_neg_eigval: keys.bool("allow_neg_eigval")?.unwrap_or(false),
        output_gate: keys
            .bool("use_gate")?
            .unwrap_or(false)
            .then_some(GateActivation::Swish),
        decay: false,
    })
}

/// fla's `GatedDeltaNetConfig` (`fla/models/gated_deltanet/configuration_gated_deltanet.py`): head
/// widths do not depend on `hidden_size`.
fn gated_deltanet(keys: &Keys<'_>) -> Result<DeltaRuleConfig, String> {
    let num_heads = keys.u32("num_heads")?.unwrap_or(6);
    let head_k_dim = keys.u32("head_dim")?.unwrap_or(256);
    let expand_v = keys.f64("expand_v")?.unwrap_or(2.0);
    let v = f64::from(head_k_dim) * expand_v;
    if num_heads == 0 || head_k_dim == 0 || v.fract() != 0.0 || v <= 0.0 || v > f64::from(u32::MAX)
    {
        return Err(format!(
            "{num_heads} heads of head_dim {head_k_dim} × expand_v {expand_v}: not whole widths"
        ));
    }
    let activation = match keys.str("output_gate_activation")?.unwrap_or("swish") {
        "swish" | "silu" => GateActivation::Swish,
        "sigmoid" => GateActivation::Sigmoid,
        other => {
            return Err(format!(
                "output_gate_activation {other:?}: fla takes swish or sigmoid"
            ));
        }
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole and in range
    Ok(DeltaRuleConfig {
        num_heads,
        head_k_dim,
        head_v_dim: v as u32,
        short_conv: short_conv(keys, true)?,
        use_beta: true,
        allow_neg_eigval: keys.bool("allow_neg_eigval")?.unwrap_or(false),
        output_gate: keys.bool("use_gate")?.unwrap_or(true).then_some(activation),
        decay: true,
    })
}

/// Hugging Face's `GPT2Config`, its defaults where a key is absent (GPT-2 small's shape, 0.1 dropout).
/// flame-train trains without dropout: a dropout other than 0, absent ones included, is refused.
fn gpt2(keys: &Keys<'_>) -> Result<ModelConfig, String> {
    let hidden_size = keys.u32("n_embd")?.unwrap_or(768);
    let num_heads = keys.u32("n_head")?.unwrap_or(12);
    if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
        return Err(format!(
            "n_head {num_heads} does not divide n_embd {hidden_size}"
        ));
    }
    for key in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
        let p = keys.f64(key)?;
        if p.unwrap_or(0.1) != 0.0 {
            let default = if p.is_none() {
                " (transformers' default where the key is absent)"
            } else {
                ""
            };
            return Err(format!(
                "{key} {}{default}: flame-train trains GPT-2 without dropout; set {key}: 0.0",
                p.unwrap_or(0.1)
            ));
        }
    }
    let activation = match keys.str("activation_function")?.unwrap_or("gelu_new") {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Gelu::Tanh,
        "gelu" => Gelu::Erf,
        other => {
            return Err(format!(
                "activation_function {other:?}: flame-train's GPT-2 has GELU (gelu_new, gelu_pytorch_tanh, gelu_fast, gelu)"
            ));
        }
    };
    let n_positions = keys.u32("n_positions")?.unwrap_or(1024);
    if n_positions == 0 {
        return Err("n_positions 0: GPT-2 needs a position".into());
    }
    Ok(ModelConfig {
        model_type: "gpt2".into(),
        hidden_size,
        num_hidden_layers: keys.u32("n_layer")?.unwrap_or(12),
        vocab_size: keys.u32("vocab_size")?.unwrap_or(50257),
        intermediate_size: keys.u32("n_inner")?.unwrap_or(4 * hidden_size),
        norm_eps: keys.f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        tie_word_embeddings: keys.bool("tie_word_embeddings")?.unwrap_or(true),
        initializer_range: keys.f64("initializer_range")?.unwrap_or(0.02),
        // GPT-2's embedding has no padding row: `pad_token_id` only tells generation what to pad with.
        pad_token_id: None,
        bos_token_id: keys.u32("bos_token_id")?.unwrap_or(50256),
        eos_token_id: keys.u32("eos_token_id")?.unwrap_or(50256),
        mixer: Mixer::Gpt2(Gpt2Config {
            num_heads,
            n_positions,
            activation,
        }),
        keys: Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Llama `config.json` (the export's, as `transformers` writes Llama's) reads back as the
    /// transformer it came from; a Mistral one's sliding window is fla's `window_size`, `transformers` 5's
    /// `rope_parameters` give the RoPE base; scaled RoPE, or a key flame-train does not map, is refused
    /// by name.
    #[test]
    fn llama_and_mistral_configs_are_transformers() {
        for name in ["transformer_340M.json", "transformer_1B.json"] {
            let ours = config(name);
            let hf = crate::models::transformer::hf_config(&ours).to_string();
            let back = ModelConfig::from_json(&hf).unwrap();
            let fields = |c: &ModelConfig| {
                let a = c.attention();
                (
                    (
                        c.hidden_size,
                        c.intermediate_size,
                        c.num_hidden_layers,
                        c.vocab_size,
                    ),
                    (
                        a.num_heads,
                        a.num_kv_heads,
                        a.qkv_bias,
                        a.max_position_embeddings,
                    ),
                    (c.tie_word_embeddings, c.norm_eps, a.rope_theta),
                )
            };
            assert_eq!(fields(&back), fields(&ours), "{name}");
        }
        let mut mistral: serde_json::Map<String, Value> = serde_json::from_value(
            crate::models::transformer::hf_config(&config("transformer_340M.json")),
        )
        .unwrap();
        mistral.insert("model_type".into(), "mistral".into());
        // transformers 5 writes the RoPE base inside rope_parameters; a Mistral's window is fla's.
        mistral.remove("rope_theta");
        mistral.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 1e6}),
        );
        mistral.insert("sliding_window".into(), 4096.into());
        let c = ModelConfig::from_keys(mistral.clone()).unwrap();
        assert_eq!(
            (c.attention().window_size, c.attention().rope_theta),
            (Some(4096), 1e6)
        );
        mistral.insert("sliding_window".into(), Value::Null);
        assert_eq!(
            ModelConfig::from_keys(mistral.clone())
                .unwrap()
                .attention()
                .window_size,
            None
        );
        let mut llama3 = mistral.clone();
        llama3.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
        );
        let err = ModelConfig::from_keys(llama3).unwrap_err();
        assert!(err.contains("rope_type \"llama3\""), "{err}");
        mistral.insert("rope_parameters_v2".into(), 1.into());
        let err = ModelConfig::from_keys(mistral).unwrap_err();
        assert!(err.contains("rope_parameters_v2"), "{err}");
    }

    fn config(name: &str) -> ModelConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs")
            .join(name);
        ModelConfig::load(&path).unwrap()
    }

    #[test]
    fn flames_configs_load_with_flas_defaults() {
        let small = config("transformer_340M.json");
        let a = small.attention();
        assert_eq!(
            (small.hidden_size, small.num_hidden_layers, a.num_heads),
            (1024, 24, 16)
        );
        assert_eq!(
            (a.num_kv_heads, small.intermediate_size, small.vocab_size),
            (16, 2816, 32000)
        );
        assert!(!small.tie_word_embeddings);
        // ≈ 374M parameters with untied embeddings (../shared/notes/flame.md §3.1: 373.9M measured).
        let (params, _) = small.num_params();
        assert!((373_000_000..375_000_000).contains(&params), "{params}");
        let big = config("transformer_7B.json");
        assert_eq!(
            (big.attention().num_kv_heads, big.intermediate_size),
            (8, 14336)
        );
        assert_eq!(config("transformer_1B.json").intermediate_size, 5632);
    }

    /// flame's linear-attention configs build the shapes fla 0.6.0 builds: parameter totals as fla's
    /// modules count them (`sum(p.numel())`, computed from fla's layer code for each config).
    #[test]
    fn flames_linear_attention_configs_have_flas_shapes_and_parameter_counts() {
        for (name, params) in [
            ("gla_340M.json", 374_475_776),
            ("gla_7B.json", 6_741_635_072),
            ("delta_net_340M.json", 374_362_112),
            ("delta_net_1B.json", 1_365_677_056),
            ("gated_deltanet_340M.json", 512_272_124),
            ("gated_deltanet_1B.json", 1_387_348_732),
        ] {
            assert_eq!(config(name).num_params().0, params, "{name}");
        }
        let Mixer::Gla(g) = config("gla_340M.json").mixer else {
            panic!("gla")
        };
        assert_eq!((g.num_heads, g.key_dim, g.value_dim), (4, 512, 1024));
        assert!(g.use_output_gate && g.fused_gate_norm && g.short_conv.is_none());
        let Mixer::DeltaRule(d) = config("gated_deltanet_340M.json").mixer else {
            panic!("gated_deltanet")
        };
        assert_eq!((d.num_heads, d.head_k_dim, d.head_v_dim), (6, 256, 512));
        assert_eq!(d.short_conv, Some(4));
        assert!(d.decay && d.output_gate == Some(GateActivation::Swish));
        let Mixer::DeltaRule(d) = config("delta_net_1B.json").mixer else {
            panic!("delta_net")
        };
        assert!(!d.decay && d.output_gate.is_none() && d.use_beta);
        assert_eq!(config("delta_net_1B.json").pad_token_id, Some(2));
    }

    /// MFU counts each architecture's own FLOPs: flame's count for the transformer, and for the linear
    /// models the count of what their layers compute (a figure per config, worked out by hand from the
    /// formula in `flops_per_token`'s documentation).
    #[test]
    fn flops_are_counted_by_what_each_architecture_computes() {
        let transformer = config("transformer_340M.json");
        let (params, embeddings) = transformer.num_params();
        assert_eq!(
            transformer.flops_per_token(2048),
            6 * (params - embeddings) + 12 * 24 * 1024 * 2048
        );
        assert_eq!(config("gla_340M.json").flops_per_token(2048), 2_101_739_520);
        // Constant in the context: the linear models' cost per token does not grow with it.
        assert_eq!(
            config("gla_340M.json").flops_per_token(65536),
            2_101_739_520
        );
        assert_eq!(
            config("gated_deltanet_340M.json").flops_per_token(2048),
            3_261_702_144
        );
        let delta = config("delta_net_340M.json").flops_per_token(2048);
        // Below flame's count, 6·(all parameters − embeddings) + 12·layers·hidden·context, by ~1.3×.
        let (params, embeddings) = config("delta_net_340M.json").num_params();
        let flame = 6 * (params - embeddings) + 12 * 24 * 1024 * 2048;
        assert!(
            delta < flame && flame < delta * 14 / 10,
            "{delta} vs {flame}"
        );
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
            r#"{"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "num_heads": 4}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("mamba2"), "{err}");
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
        assert!(c.attention().qkv_bias);
        assert_eq!(c.pad_token_id, Some(2));
    }

    /// Issue 17: the linear models' keys, likewise: what fla 0.6.0 ignores or builds differently is
    /// refused by name; keys with no effect on these models (`max_position_embeddings`) load.
    #[test]
    fn linear_attention_keys_that_would_change_the_model_are_refused_by_name() {
        for (base, refused) in [
            (
                r#"{"model_type": "gla", "hidden_size": 64, "num_hidden_layers": 1, "num_heads": 2"#,
                &[
                    r#""feature_map": "relu""#,
                    r#""use_gv": true"#,
                    r#""use_gk": false"#,
                    r#""num_kv_heads": 1"#,
                    r#""attn": {"layers": [0], "num_heads": 2}"#,
                    r#""expand_k": 0.3"#,
                ][..],
            ),
            (
                r#"{"model_type": "delta_net", "hidden_size": 64, "num_hidden_layers": 1, "num_heads": 2"#,
                &[
                    r#""qk_activation": "relu""#,
                    r#""qk_norm": "sum""#,
                    r#""use_output_norm": false"#,
                    r#""head_dim": 32"#,
                ][..],
            ),
            (
                r#"{"model_type": "gated_deltanet", "hidden_size": 64, "num_hidden_layers": 1, "num_heads": 2, "head_dim": 16"#,
                &[
                    r#""num_v_heads": 4"#,
                    r#""output_gate_activation": "tanh""#,
                    r#""expand_k": 1"#,
                ][..],
            ),
        ] {
            ModelConfig::from_json(&format!("{base}, \"max_position_embeddings\": 4096}}"))
                .expect(base);
            for extra in refused {
                let key = extra.split('"').nth(1).unwrap();
                let err = ModelConfig::from_json(&format!("{base}, {extra}}}"))
                    .expect_err(extra)
                    .to_string();
                assert!(err.contains(key), "{extra}: {err}");
            }
        }
    }

    /// Every config flame ships for the models flame-train builds loads as it is
    /// (`../shared/reference/flame-configs`, the copies in `configs/`).
    #[test]
    fn flames_own_configs_load_unchanged() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for dir in ["configs", "../shared/reference/flame-configs"] {
            for name in [
                "transformer_340M.json",
                "transformer_1B.json",
                "transformer_7B.json",
                "gla_340M.json",
                "gla_7B.json",
                "delta_net_340M.json",
                "delta_net_1B.json",
                "gated_deltanet_340M.json",
                "gated_deltanet_1B.json",
            ] {
                let path = root.join(dir).join(name);
                ModelConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        // flame's 1B config sets pad_token_id 2: fla never trains that embedding row.
        let one_b = config("transformer_1B.json");
        assert_eq!(one_b.pad_token_id, Some(2));
    }

    /// Issue 24: the four GPT-2 configs have `transformers`' parameter counts (at GPT-2's own
    /// vocabulary) and the FLOPs of nanoGPT's count; GPT-2 small's keys left out take `GPT2Config`'s
    /// defaults, except dropout, which is refused.
    #[test]
    fn gpt2_configs_have_transformers_shapes_and_parameter_counts() {
        for (name, params) in [
            ("gpt2-small.json", 124_439_808),
            ("gpt2-medium.json", 354_823_168),
            ("gpt2-large.json", 774_030_080),
            ("gpt2-xl.json", 1_557_611_200),
        ] {
            let mut c = config(name);
            assert_eq!(c.vocab_size, 50264, "{name}: padded to a multiple of 8");
            c.vocab_size = 50257;
            assert_eq!(c.num_params().0, params, "{name}");
            assert_eq!(c.intermediate_size, 4 * c.hidden_size);
            assert!(c.tie_word_embeddings);
        }
        let small = config("gpt2-small.json");
        let gpt2 = small.gpt2().unwrap();
        assert_eq!((gpt2.num_heads, gpt2.n_positions), (12, 1024));
        assert_eq!(gpt2.activation, Gelu::Tanh);
        // 6·(non-embedding parameters + the tied output layer) + 12·layers·hidden·context.
        let (params, embeddings) = small.num_params();
        let (h, v) = (768, 50264);
        assert_eq!(embeddings, (v + 1024) * h);
        assert_eq!(
            small.flops_per_token(1024),
            6 * (params - embeddings + v * h) + 12 * 12 * h * 1024
        );
        let defaults = ModelConfig::from_json(
            r#"{"model_type": "gpt2", "resid_pdrop": 0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}"#,
        )
        .unwrap();
        assert_eq!(
            (
                defaults.hidden_size,
                defaults.num_hidden_layers,
                defaults.vocab_size
            ),
            (768, 12, 50257)
        );
        assert_eq!((defaults.norm_eps, defaults.eos_token_id), (1e-5, 50256));
        assert_eq!(
            defaults.pad_token_id, None,
            "GPT-2's embedding has no padding row"
        );
    }

    #[test]
    fn gpt2_keys_that_would_change_the_model_are_refused_by_name() {
        let base = r#"{"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4"#;
        let no_dropout = r#", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0"#;
        for (extra, named) in [
            ("", "resid_pdrop 0.1 (transformers' default"),
            (
                r#", "resid_pdrop": 0.0, "embd_pdrop": 0.1, "attn_pdrop": 0.0"#,
                "embd_pdrop 0.1",
            ),
            (
                r#", "scale_attn_by_inverse_layer_idx": true"#,
                "scale_attn_by_inverse_layer_idx",
            ),
            (r#", "scale_attn_weights": false"#, "scale_attn_weights"),
            (r#", "add_cross_attention": true"#, "add_cross_attention"),
            (
                r#", "activation_function": "relu""#,
                "activation_function \"relu\"",
            ),
            (r#", "n_head": 5"#, "n_head 5 does not divide n_embd 64"),
            (r#", "n_embd_typo": 3"#, "n_embd_typo"),
        ] {
            let dropout = if named.contains("pdrop") {
                ""
            } else {
                no_dropout
            };
            let text = format!("{base}{dropout}{extra}}}")
                .replace(r#""n_head": 4, "n_head": 5"#, r#""n_head": 5"#);
            let err = ModelConfig::from_json(&text).unwrap_err().to_string();
            assert!(err.contains(named), "{text}: {err}");
        }
        // Keys only generation or GPT2DoubleHeadsModel read, at any value.
        let text = format!(
            r#"{base}{no_dropout}, "n_ctx": 1024, "summary_type": "cls_index", "pad_token_id": 0,
               "reorder_and_upcast_attn": true, "activation_function": "gelu"}}"#
        );
        let c = ModelConfig::from_json(&text).unwrap();
        assert_eq!(c.gpt2().unwrap().activation, Gelu::Erf);
    }
}
