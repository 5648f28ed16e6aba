//! The transformer: Hugging Face `LlamaForCausalLM`'s computation (RMSNorm in fp32, rotate-half RoPE,
//! SwiGLU, multi-head or grouped-query attention) with its parameter names, so that a checkpoint
//! exports as `model.safetensors` as it is.
//!
//! Varlen: each sample's `cu_seqlens` (from flame-stream) restart the positions at every document and
//! make attention block-diagonal (here a boolean mask for `scaled_dot_product_attention`); the label of
//! the last token of a document (the next document's first token) is ignored, so nothing is learnt
//! across a boundary. flame itself lets that token predict the next document's BOS; we do not.

use tch::nn::{self, Init};
use tch::{Device, Kind, Reduction, Tensor};

use crate::config::ModelConfig;

/// Label id that the loss ignores.
pub const IGNORE: i64 = -100;

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
    inv_freq: Tensor,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A batch as the model takes it: tokens `[B, T]` and, per sample, its `cu_seqlens`.
#[derive(Debug)]
pub struct Inputs {
    /// Token ids, int64 `[B, T]`.
    pub tokens: Tensor,
    /// Position of each token in its document, int64 `[B, T]`.
    pub positions: Tensor,
    /// `[B, 1, T, T]`, true where a query may attend to a key (causal and within its document), on the
    /// CPU; `None` for plain causal attention over the whole window, or on CUDA.
    pub mask: Option<Tensor>,
    /// On CUDA, for varlen batches: every document of the batch as one packed sequence list
    /// (`cu_seqlens` int32 over `B × T` tokens) and the longest, for flash attention.
    pub packed: Option<(Tensor, i64)>,
    /// Next-token labels `[B, T - 1]`, [`IGNORE`] across document boundaries.
    pub labels: Tensor,
}

impl Inputs {
    /// Builds the inputs of samples of `seq_len` tokens each (`tokens` row-major) with their boundaries.
    ///
    /// # Panics
    /// If the shapes disagree.
    pub fn new(tokens: &[u32], seq_len: usize, cu_seqlens: &[Vec<u32>], device: Device) -> Self {
        let batch = cu_seqlens.len();
        assert_eq!(tokens.len(), batch * seq_len, "tokens are [B, seq_len]");
        let mut positions = Vec::with_capacity(tokens.len());
        let mut documents = Vec::with_capacity(tokens.len());
        let mut labels = Vec::with_capacity(batch * (seq_len - 1));
        let varlen = cu_seqlens.iter().any(|cu| cu.len() > 2);
        let as_i64 = |n: usize| i64::try_from(n).expect("sizes fit i64");
        for (sample, cu) in cu_seqlens.iter().enumerate() {
            let row = &tokens[sample * seq_len..(sample + 1) * seq_len];
            let mut doc = 0usize;
            let mut start = 0usize;
            for at in 0..seq_len {
                if cu.get(doc + 1).is_some_and(|&c| c as usize == at) {
                    doc += 1;
                    start = at;
                }
                positions.push(as_i64(at - start));
                documents.push(as_i64(doc));
                if at + 1 < seq_len {
                    let starts_document = cu.iter().any(|&c| c as usize == at + 1);
                    labels.push(if starts_document {
                        IGNORE
                    } else {
                        i64::from(row[at + 1])
                    });
                }
            }
        }
        let (b, t) = (as_i64(batch), as_i64(seq_len));
        let ids: Vec<i64> = tokens.iter().map(|&x| i64::from(x)).collect();
        let packed = (varlen && device.is_cuda()).then(|| {
            let mut flat = vec![0i32];
            let mut longest = 0u32;
            for (sample, cu) in cu_seqlens.iter().enumerate() {
                let base = u32::try_from(sample * seq_len).expect("batch tokens fit u32");
                for pair in cu.windows(2) {
                    longest = longest.max(pair[1] - pair[0]);
                    flat.push(i32::try_from(base + pair[1]).expect("batch tokens fit i32"));
                }
            }
            (
                upload(Tensor::from_slice(&flat), device),
                i64::from(longest),
            )
        });
        let mask = (varlen && !device.is_cuda()).then(|| {
            let documents = upload(Tensor::from_slice(&documents).view([b, t]), device);
            let same = documents.unsqueeze(2).eq_tensor(&documents.unsqueeze(1));
            let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0);
            same.logical_and(&causal).unsqueeze(1)
        });
        Self {
            tokens: upload(Tensor::from_slice(&ids).view([b, t]), device),
            positions: upload(Tensor::from_slice(&positions).view([b, t]), device),
            mask,
            packed,
            labels: upload(Tensor::from_slice(&labels).view([b, t - 1]), device),
        }
    }
}

/// Moves a host tensor to `device`: on CUDA through pinned memory without waiting, so that the copy
/// queues behind the GPU's work instead of blocking the host until it is done.
fn upload(t: Tensor, device: Device) -> Tensor {
    if device.is_cuda() {
        t.pin_memory(device)
            .to_device_(device, t.kind(), true, false)
    } else {
        t
    }
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let xf = x.to_kind(Kind::Float);
    let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    (xf * (variance + eps).rsqrt()).to_kind(x.kind()) * weight
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1)
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
                    c.attention_bias
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
        let d = i64::from(c.head_dim());
        // As Hugging Face: 1 / theta^(2i/d) in float32.
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let (d_float, theta) = (d as f64, c.rope_theta as f32);
        let exponents = Tensor::arange_start_step(0, d, 2, (Kind::Float, vs.device())) / d_float;
        let inv_freq = Tensor::from(theta)
            .to_device(vs.device())
            .pow(&exponents)
            .reciprocal();
        Self {
            config: c.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
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
    #[allow(clippy::many_single_char_names)]
    // the usual names of the dimensions
    // `x = x + y`, not `x += y`: an in-place add would overwrite a tensor autograd still needs.
    #[allow(clippy::assign_op_pattern)]
    fn logits(&self, inputs: &Inputs) -> Tensor {
        let c = &self.config;
        let (nh, nkv, d) = (
            i64::from(c.num_heads),
            i64::from(c.num_kv_heads),
            i64::from(c.head_dim()),
        );
        let size = inputs.tokens.size();
        let (b, t) = (size[0], size[1]);
        let freqs = inputs.positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let angles = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // [B, 1, T, D]
        let (cos, sin) = (angles.cos(), angles.sin());
        let rope =
            |x: &Tensor| x * &cos.to_kind(x.kind()) + rotate_half(x) * &sin.to_kind(x.kind());
        let mut x = Tensor::embedding(&self.embed, &inputs.tokens, -1, false, false);
        for block in &self.blocks {
            let hx = rms_norm(&x, &block.input_norm, c.norm_eps);
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
            let (q, k) = (rope(&q), rope(&k));
            let y = if let Some((cu, longest)) = &inputs.packed {
                // Flash attention over the documents: [B·T, heads, d], kv heads as they are (GQA).
                let flat = |x: &Tensor, heads: i64| x.transpose(1, 2).reshape([b * t, heads, d]);
                crate::shim::flash_varlen(
                    &flat(&q, nh),
                    &flat(&k, nkv),
                    &flat(&v, nkv),
                    cu,
                    *longest,
                )
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
            let y = y.linear(&block.o, None::<Tensor>);
            x = x + y;
            let hx = rms_norm(&x, &block.post_norm, c.norm_eps);
            let m = (hx.linear(&block.gate, None::<Tensor>).silu()
                * hx.linear(&block.up, None::<Tensor>))
            .linear(&block.down, None::<Tensor>);
            x = x + m;
        }
        let x = rms_norm(&x, &self.norm, c.norm_eps);
        x.linear(self.lm_head.as_ref().unwrap_or(&self.embed), None::<Tensor>)
    }

    /// Mean next-token cross-entropy over the labels that are not [`IGNORE`].
    pub fn loss(&self, inputs: &Inputs) -> Tensor {
        // Cross-entropy runs in float32 under autocast; the logits need not be cast first.
        let logits = self.logits(inputs);
        let t = logits.size()[1];
        let vocab = i64::from(self.config.vocab_size);
        logits
            .narrow(1, 0, t - 1)
            .reshape([-1, vocab])
            .cross_entropy_loss::<Tensor>(
                &inputs.labels.reshape([-1]),
                None,
                Reduction::Mean,
                IGNORE,
                0.0,
            )
    }
}
