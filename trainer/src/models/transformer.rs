//! flame's `transformer`: Hugging Face `LlamaForCausalLM`'s computation (RMSNorm in fp32, rotate-half
//! RoPE, SwiGLU, multi-head or grouped-query attention) with its parameter names, so that a checkpoint
//! exports as `model.safetensors` as it is. The attention is varlen: flash attention over the batch's
//! documents on CUDA, a block-diagonal causal mask on the CPU.

use tch::Tensor;
use tch::nn::{self, Init};

use super::layers::{Rotary, apply_rotary, causal_attention};
use super::lm::{Context, Mixer, Names};
use crate::config::{AttentionConfig, ModelConfig};

/// Hugging Face Llama's names.
pub const NAMES: Names = Names {
    root: "model",
    layers: "layers",
    embed: "embed_tokens",
    mixer: "self_attn",
    mixer_norm: "input_layernorm",
    mlp_norm: "post_attention_layernorm",
    norm: "norm",
};

/// Multi-head or grouped-query attention with RoPE.
#[derive(Debug)]
pub struct Attention {
    config: AttentionConfig,
    head_dim: i64,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
}

impl Attention {
    /// The projections of `config` under `p` (`q_proj`, `k_proj`, `v_proj`, `o_proj`).
    pub fn new(p: &nn::Path<'_>, model: &ModelConfig) -> Self {
        let a = model.attention().clone();
        let std = Init::Randn {
            mean: 0.0,
            stdev: model.initializer_range,
        };
        let h = i64::from(model.hidden_size);
        let head_dim = i64::from(model.hidden_size / a.num_heads);
        let kv = i64::from(a.num_kv_heads) * head_dim;
        let bias = |name: &str, n: i64| {
            a.qkv_bias
                .then(|| (p / name).var("bias", &[n], Init::Const(0.0)))
        };
        Self {
            q: (p / "q_proj").var("weight", &[h, h], std),
            k: (p / "k_proj").var("weight", &[kv, h], std),
            v: (p / "v_proj").var("weight", &[kv, h], std),
            o: (p / "o_proj").var("weight", &[h, h], std),
            q_bias: bias("q_proj", h),
            k_bias: bias("k_proj", kv),
            v_bias: bias("v_proj", kv),
            head_dim,
            config: a,
        }
    }
}

impl Mixer for Attention {
    #[allow(clippy::many_single_char_names)] // the usual names of the dimensions
    fn forward(&self, hx: &Tensor, context: &Context<'_>) -> Tensor {
        let inputs = context.inputs;
        let rope = context.rope.as_ref().expect("attention gets RoPE's tables");
        let (nh, nkv, d) = (
            i64::from(self.config.num_heads),
            i64::from(self.config.num_kv_heads),
            self.head_dim,
        );
        let size = inputs.tokens.size();
        let (b, t) = (size[0], size[1]);
        let q = hx
            .linear(&self.q, self.q_bias.as_ref())
            .view([b, t, nh, d])
            .transpose(1, 2);
        let k = hx
            .linear(&self.k, self.k_bias.as_ref())
            .view([b, t, nkv, d])
            .transpose(1, 2);
        let v = hx
            .linear(&self.v, self.v_bias.as_ref())
            .view([b, t, nkv, d])
            .transpose(1, 2);
        let (q, k) = (apply_rotary(&q, rope), apply_rotary(&k, rope));
        causal_attention(&q, &k, &v, inputs).linear(&self.o, None::<Tensor>)
    }
}

/// RoPE's inverse frequencies for the heads of `config`, on `device`: made once per model.
pub fn rotary(config: &ModelConfig, device: tch::Device) -> Rotary {
    let a = config.attention();
    Rotary::new(
        i64::from(config.hidden_size / a.num_heads),
        a.rope_theta,
        device,
    )
}

/// Llama's config, or Qwen2's with `qkv_bias` (Qwen2 is Llama with biases on the query, key and value
/// projections and none on the output one: fla's `qkv_bias`); with a `window_size`, Mistral's (Llama
/// with a sliding window) or Qwen2's with its window on every layer.
pub fn hf_config(c: &ModelConfig) -> serde_json::Value {
    let a = c.attention();
    let (architecture, model_type) = match (a.qkv_bias, a.window_size) {
        (true, _) => ("Qwen2ForCausalLM", "qwen2"),
        (false, None) => ("LlamaForCausalLM", "llama"),
        (false, Some(_)) => ("MistralForCausalLM", "mistral"),
    };
    let mut config = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": a.num_heads,
        "num_key_value_heads": a.num_kv_heads,
        "head_dim": c.hidden_size / a.num_heads,
        "vocab_size": c.vocab_size,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": a.rope_theta,
        "max_position_embeddings": a.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "hidden_act": "silu",
        "initializer_range": c.initializer_range,
        "pad_token_id": c.pad_token_id,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": "float32",
    });
    match (a.qkv_bias, a.window_size) {
        (true, window) => {
            config["use_sliding_window"] = window.is_some().into();
            config["sliding_window"] = window.into();
            config["max_window_layers"] = 0.into();
        }
        (false, None) => {
            config["attention_bias"] = false.into();
            config["mlp_bias"] = false.into();
        }
        (false, Some(window)) => config["sliding_window"] = window.into(),
    }
    config
}
