//! GPT-2: Hugging Face `GPT2LMHeadModel`'s computation (`transformers/models/gpt2/modeling_gpt2.py`)
//! with its parameter names and shapes, so that a checkpoint exports as `model.safetensors` as it is:
//! learned absolute positions added to the token embedding, pre-norm blocks with LayerNorm (weights and
//! biases), multi-head attention whose query, key and value projections are one `Conv1D` (`c_attn`,
//! weights stored `[in, out]`), a GELU MLP with biases, the output layer tied to the embedding. The
//! blocks are [`super::lm::CausalLm`]'s; this file has the attention and the export's config. Varlen
//! as the transformer's: positions restart at every document, attention stays within it.

use tch::Tensor;
use tch::nn::{self, Init};

use super::layers::{causal_attention, conv1d};
use super::lm::{Context, Mixer, Names};
use crate::config::ModelConfig;

/// `GPT2LMHeadModel`'s names (`transformer.wte`, `transformer.h.N.attn`, `ln_1`, `ln_2`, `ln_f`).
pub const NAMES: Names = Names {
    root: "transformer",
    layers: "h",
    embed: "wte",
    mixer: "attn",
    mixer_norm: "ln_1",
    mlp_norm: "ln_2",
    norm: "ln_f",
};

/// The standard deviation of the projections into the residual stream (`c_proj`, the attention's and
/// the MLP's): `initializer_range / √(2·layers)`, as `GPT2PreTrainedModel._init_weights` draws them.
pub fn residual_init(config: &ModelConfig) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: config.initializer_range / (2.0 * f64::from(config.num_hidden_layers)).sqrt(),
    }
}

/// GPT-2's attention: `c_attn` (`[hidden, 3·hidden]`, q, k and v side by side) and `c_proj`, with
/// biases; scores scaled by `1/√head_dim`.
#[derive(Debug)]
pub struct Attention {
    heads: i64,
    c_attn: (Tensor, Tensor),
    c_proj: (Tensor, Tensor),
}

impl Attention {
    /// The attention of `config` under `p`, initialised as `transformers` does: weights normal with
    /// `initializer_range` (`c_proj`'s scaled down, [`residual_init`]), biases zero.
    pub fn new(p: &nn::Path<'_>, config: &ModelConfig) -> Self {
        let gpt2 = config.gpt2().expect("a GPT-2 config");
        let h = i64::from(config.hidden_size);
        let std = Init::Randn {
            mean: 0.0,
            stdev: config.initializer_range,
        };
        let (attn, proj) = (p / "c_attn", p / "c_proj");
        Self {
            heads: i64::from(gpt2.num_heads),
            c_attn: (
                attn.var("weight", &[h, 3 * h], std),
                attn.var("bias", &[3 * h], Init::Const(0.0)),
            ),
            c_proj: (
                proj.var("weight", &[h, h], residual_init(config)),
                proj.var("bias", &[h], Init::Const(0.0)),
            ),
        }
    }
}

impl Mixer for Attention {
    #[allow(clippy::many_single_char_names)] // the usual names of the dimensions
    fn forward(&self, x: &Tensor, context: &Context<'_>) -> Tensor {
        let size = x.size();
        let (b, t, h) = (size[0], size[1], size[2]);
        let d = h / self.heads;
        let qkv = conv1d(x, &self.c_attn.0, &self.c_attn.1);
        let heads = |i: i64| {
            qkv.narrow(-1, i * h, h)
                .view([b, t, self.heads, d])
                .transpose(1, 2)
        };
        let y = causal_attention(&heads(0), &heads(1), &heads(2), context.inputs);
        conv1d(&y, &self.c_proj.0, &self.c_proj.1)
    }
}

/// The export's `config.json`: the config's keys as written (`transformers`' own names), as
/// `GPT2LMHeadModel`.
pub fn hf_config(config: &ModelConfig) -> serde_json::Value {
    let mut keys = config.keys.clone();
    keys.insert(
        "architectures".into(),
        serde_json::json!(["GPT2LMHeadModel"]),
    );
    keys.insert("torch_dtype".into(), "float32".into());
    serde_json::Value::Object(keys)
}
