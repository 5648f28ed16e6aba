//! flame's `transformer`: Hugging Face `LlamaForCausalLM`'s computation (RMSNorm in fp32, rotate-half
//! RoPE, SwiGLU, multi-head or grouped-query attention) with its parameter names, so that a checkpoint
//! exports as `model.safetensors` as it is.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::layers::{
    Rotary, apply_rotary, chunked_head_backward, next_token_loss, rms_norm, swiglu,
};
use super::{Checkpointing, Inputs, Model};
use crate::config::ModelConfig;

struct Block {
    input_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    post_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// A causal language model of flame's `transformer` family, its parameters in a [`nn::VarStore`].
pub struct Transformer {
    config: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Option<Tensor>,
    rotary: Rotary,
    /// Label positions per chunk of the output layer and loss.
    loss_chunk: i64,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Transformer {
    /// A model of `config` with fresh weights (normal with `initializer_range`, norms at one) in `vs`.
    #[allow(clippy::many_single_char_names)] // the usual names of the dimensions
    pub fn new(vs: &nn::Path<'_>, config: &ModelConfig) -> Self {
        let c = config;
        let std = Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        let (h, i, v) = (
            i64::from(c.hidden_size),
            i64::from(c.intermediate_size),
            i64::from(c.vocab_size),
        );
        let kv = i64::from(c.num_kv_heads * c.head_dim());
        let model = vs / "model";
        let embed = (&model / "embed_tokens").var("weight", &[v, h], std);
        let blocks = (0..c.num_hidden_layers)
            .map(|l| {
                let p = &model / "layers" / l;
                let attn = &p / "self_attn";
                let mlp = &p / "mlp";
                let bias = |name: &str, n: i64| {
                    c.qkv_bias
                        .then(|| (&attn / name).var("bias", &[n], Init::Const(0.0)))
                };
                Block {
                    input_norm: (&p / "input_layernorm").var("weight", &[h], Init::Const(1.0)),
                    q: (&attn / "q_proj").var("weight", &[h, h], std),
                    k: (&attn / "k_proj").var("weight", &[kv, h], std),
                    v: (&attn / "v_proj").var("weight", &[kv, h], std),
                    o: (&attn / "o_proj").var("weight", &[h, h], std),
                    q_bias: bias("q_proj", h),
                    k_bias: bias("k_proj", kv),
                    v_bias: bias("v_proj", kv),
                    post_norm: (&p / "post_attention_layernorm").var(
                        "weight",
                        &[h],
                        Init::Const(1.0),
                    ),
                    gate: (&mlp / "gate_proj").var("weight", &[i, h], std),
                    up: (&mlp / "up_proj").var("weight", &[i, h], std),
                    down: (&mlp / "down_proj").var("weight", &[h, i], std),
                }
            })
            .collect();
        let norm = (&model / "norm").var("weight", &[h], Init::Const(1.0));
        let lm_head =
            (!c.tie_word_embeddings).then(|| (vs / "lm_head").var("weight", &[v, h], std));
        let rotary = Rotary::new(i64::from(c.head_dim()), c.rope_theta, vs.device());
        Self {
            config: c.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            rotary,
            // About 2^28 logits (half a gigabyte in bfloat16) per chunk: 8192 rows of a 32k vocabulary.
            loss_chunk: (1i64 << 28) / v.max(1),
        }
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Logits `[B, T, vocab]` in float32.
    pub fn forward(&self, inputs: &Inputs) -> Tensor {
        self.logits(inputs).to_kind(Kind::Float)
    }

    /// Logits `[B, T, vocab]` in the compute dtype (bfloat16 under autocast).
    fn logits(&self, inputs: &Inputs) -> Tensor {
        self.hidden(inputs).linear(self.head(), None::<Tensor>)
    }

    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// RoPE's cosines and sines `[B, 1, T, head_dim]` at the inputs' positions.
    fn rope(&self, inputs: &Inputs) -> (Tensor, Tensor) {
        self.rotary.tables(&inputs.positions)
    }

    fn embed(&self, inputs: &Inputs) -> Tensor {
        // fla's `nn.Embedding(..., padding_idx=pad_token_id)`: the lookup never trains that row.
        let padding_idx = self.config.pad_token_id.map_or(-1, i64::from);
        Tensor::embedding(&self.embed, &inputs.tokens, padding_idx, false, false)
    }

    /// The final hidden states `[B, T, hidden]`, normalised.
    fn hidden(&self, inputs: &Inputs) -> Tensor {
        let rope = self.rope(inputs);
        let mut x = self.embed(inputs);
        for block in &self.blocks {
            x = self.block(block, &x, inputs, &rope);
        }
        rms_norm(&x, &self.norm, self.config.norm_eps)
    }

    /// One decoder layer: `x + attention(norm(x))`, then `+ mlp(norm(·))`.
    #[allow(clippy::many_single_char_names)]
    // the usual names of the dimensions
    // `x = x + y`, not `x += y`: an in-place add would overwrite a tensor autograd still needs.
    #[allow(clippy::assign_op_pattern)]
    fn block(&self, block: &Block, x: &Tensor, inputs: &Inputs, rope: &(Tensor, Tensor)) -> Tensor {
        let c = &self.config;
        let (nh, nkv, d) = (
            i64::from(c.num_heads),
            i64::from(c.num_kv_heads),
            i64::from(c.head_dim()),
        );
        let size = inputs.tokens.size();
        let (b, t) = (size[0], size[1]);
        let hx = rms_norm(x, &block.input_norm, c.norm_eps);
        let q = hx
            .linear(&block.q, block.q_bias.as_ref())
            .view([b, t, nh, d])
            .transpose(1, 2);
        let k = hx
            .linear(&block.k, block.k_bias.as_ref())
            .view([b, t, nkv, d])
            .transpose(1, 2);
        let v = hx
            .linear(&block.v, block.v_bias.as_ref())
            .view([b, t, nkv, d])
            .transpose(1, 2);
        let (q, k) = (apply_rotary(&q, rope), apply_rotary(&k, rope));
        let y = if let Some((cu, longest)) = &inputs.packed {
            // Flash attention over the documents: [B·T, heads, d], kv heads as they are (GQA).
            let flat = |x: &Tensor, heads: i64| x.transpose(1, 2).reshape([b * t, heads, d]);
            crate::shim::flash_varlen(&flat(&q, nh), &flat(&k, nkv), &flat(&v, nkv), cu, *longest)
                .expect("flash attention")
                .reshape([b, t, nh * d])
        } else {
            let (k, v) = if nkv == nh {
                (k, v)
            } else {
                (
                    k.repeat_interleave_self_int(nh / nkv, 1, None),
                    v.repeat_interleave_self_int(nh / nkv, 1, None),
                )
            };
            Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                inputs.mask.as_ref(),
                0.0,
                inputs.mask.is_none(),
                None,
                false,
            )
            .transpose(1, 2)
            .reshape([b, t, nh * d])
        };
        let x = x + y.linear(&block.o, None::<Tensor>);
        let hx = rms_norm(&x, &block.post_norm, c.norm_eps);
        x + swiglu(&hx, &block.gate, &block.up, &block.down)
    }

    /// Sets how many label positions the loss takes at a time (see [`Self::forward_backward`]).
    pub fn set_loss_chunk(&mut self, rows: i64) {
        self.loss_chunk = rows.max(1);
    }

    /// Forward and backward of one micro-batch: accumulates the gradients of `scale ×` its mean
    /// next-token cross-entropy into the parameters and returns that loss (unscaled, detached).
    ///
    /// The backward pass runs segment by segment (see [`Self::segment_of`]) and calls `on_segment`
    /// after each, when the gradients of the parameters that segment completes are final: the points
    /// where data parallelism starts reducing a bucket while the rest of the backward pass runs.
    ///
    /// The output layer and the loss run over a few thousand label positions at a time, each chunk's
    /// logits freed after its backward (a fused linear cross-entropy), so that `[tokens, vocab]` logits
    /// never exist whole. With [`Checkpointing::Full`], only each layer's input is kept from the
    /// forward pass and the layer is recomputed in the backward pass (torchtitan's full activation
    /// checkpointing): about a third more compute for a fraction of the memory.
    pub fn forward_backward(
        &self,
        inputs: &Inputs,
        scale: f64,
        checkpointing: Checkpointing,
        on_segment: &mut dyn FnMut(usize) -> Result<(), String>,
    ) -> Result<Tensor, String> {
        let rope = self.rope(inputs);
        let full = checkpointing == Checkpointing::Full;
        // The forward pass, cut at every layer: each layer's input is a leaf of its own graph, so the
        // backward pass can be taken one layer at a time.
        let embedded = if full {
            tch::no_grad(|| self.embed(inputs))
        } else {
            self.embed(inputs)
        };
        let mut x = embedded.detach().set_requires_grad(true);
        let mut layers = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let out = if full {
                tch::no_grad(|| self.block(block, &x, inputs, &rope))
            } else {
                self.block(block, &x, inputs, &rope)
            };
            let next = out.detach().set_requires_grad(true);
            layers.push((std::mem::replace(&mut x, next), out));
        }
        let hidden = rms_norm(&x, &self.norm, self.config.norm_eps);
        let loss =
            chunked_head_backward(&hidden, self.head(), &inputs.labels, scale, self.loss_chunk)?;
        on_segment(0)?;
        let mut grad = x.grad();
        for (done, (block, (input, out))) in self.blocks.iter().zip(layers).rev().enumerate() {
            let out = if full {
                self.block(block, &input, inputs, &rope)
            } else {
                out
            };
            crate::shim::backward(&out, &grad)?;
            drop(out);
            on_segment(done + 1)?;
            grad = input.grad();
        }
        let embedded = if full { self.embed(inputs) } else { embedded };
        crate::shim::backward(&embedded, &grad)?;
        on_segment(self.blocks.len() + 1)?;
        Ok(loss)
    }

    /// The backward segment after which the gradient of parameter `name` is final: 0 for the output
    /// layer and final norm, `1 + (layers - 1 - i)` for layer `i`, `layers + 1` for the embedding (tied
    /// to the output layer or not). `None` for a name that is not the model's.
    pub fn segment_of(&self, name: &str) -> Option<usize> {
        let layers = self.blocks.len();
        match name {
            "lm_head.weight" | "model.norm.weight" => Some(0),
            "model.embed_tokens.weight" => Some(layers + 1),
            _ => {
                let i: usize = name
                    .strip_prefix("model.layers.")?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()?;
                (i < layers).then(|| layers - i)
            }
        }
    }

    /// Mean next-token cross-entropy over the labels that are not [`super::IGNORE`].
    pub fn loss(&self, inputs: &Inputs) -> Tensor {
        next_token_loss(&self.logits(inputs), &inputs.labels)
    }
}

impl Model for Transformer {
    fn forward_backward(
        &self,
        inputs: &Inputs,
        scale: f64,
        checkpointing: Checkpointing,
        on_segment: &mut dyn FnMut(usize) -> Result<(), String>,
    ) -> Result<Tensor, String> {
        Transformer::forward_backward(self, inputs, scale, checkpointing, on_segment)
    }

    fn segment_of(&self, name: &str) -> Option<usize> {
        Transformer::segment_of(self, name)
    }

    fn forward(&self, inputs: &Inputs) -> Tensor {
        Transformer::forward(self, inputs)
    }

    fn flops_per_token(&self, context_len: u32) -> u64 {
        self.config.flops_per_token(context_len)
    }

    /// Llama's config, or Qwen2's with `qkv_bias` (Qwen2 is Llama with biases on the query, key and
    /// value projections and none on the output one: fla's `qkv_bias`).
    fn hf_config(&self) -> serde_json::Value {
        let c = &self.config;
        let (architecture, model_type) = if c.qkv_bias {
            ("Qwen2ForCausalLM", "qwen2")
        } else {
            ("LlamaForCausalLM", "llama")
        };
        let mut config = serde_json::json!({
            "architectures": [architecture],
            "model_type": model_type,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads,
            "head_dim": c.head_dim(),
            "vocab_size": c.vocab_size,
            "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "hidden_act": "silu",
            "initializer_range": c.initializer_range,
            "pad_token_id": c.pad_token_id,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
            "torch_dtype": "float32",
        });
        if c.qkv_bias {
            config["use_sliding_window"] = false.into();
        } else {
            config["attention_bias"] = false.into();
            config["mlp_bias"] = false.into();
        }
        config
    }
}
