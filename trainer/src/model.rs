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
    /// Label positions per chunk of the output layer and loss.
    loss_chunk: i64,
}

/// How the backward pass gets the forward pass's activations (torchtitan's
/// `--activation_checkpoint.mode`; its `selective` mode is not implemented).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpointing {
    /// Every activation is kept.
    None,
    /// Only each layer's input is kept; the layer is recomputed in the backward pass.
    Full,
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
        crate::shim::pin_memory(&t)
            .expect("pinned host memory")
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
        let freqs = inputs.positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let angles = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // [B, 1, T, D]
        (angles.cos(), angles.sin())
    }

    fn embed(&self, inputs: &Inputs) -> Tensor {
        Tensor::embedding(&self.embed, &inputs.tokens, -1, false, false)
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
        let (cos, sin) = rope;
        let rope =
            |x: &Tensor| x * &cos.to_kind(x.kind()) + rotate_half(x) * &sin.to_kind(x.kind());
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
        let (q, k) = (rope(&q), rope(&k));
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
        let m = (hx.linear(&block.gate, None::<Tensor>).silu()
            * hx.linear(&block.up, None::<Tensor>))
        .linear(&block.down, None::<Tensor>);
        x + m
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
        let loss = self.head_backward(&hidden, &inputs.labels, scale)?;
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

    /// The chunked output layer and loss over `hidden` (see [`Self::forward_backward`]), then the
    /// backward pass on from `hidden`.
    fn head_backward(
        &self,
        hidden: &Tensor,
        labels: &Tensor,
        scale: f64,
    ) -> Result<Tensor, String> {
        let size = hidden.size();
        let (b, t, h) = (size[0], size[1], size[2]);
        let before_last = hidden.narrow(1, 0, t - 1);
        let flat = before_last
            .reshape([-1, h])
            .detach()
            .set_requires_grad(true);
        let labels = labels.reshape([-1]);
        let count = labels
            .ne(IGNORE)
            .sum(Kind::Float)
            .clamp_min(1.0)
            .reciprocal();
        let rows = flat.size()[0];
        let mut total = Tensor::zeros([], (Kind::Float, hidden.device()));
        let mut start = 0;
        while start < rows {
            let n = self.loss_chunk.min(rows - start);
            let loss = flat
                .narrow(0, start, n)
                .linear(self.head(), None::<Tensor>)
                .cross_entropy_loss::<Tensor>(
                    &labels.narrow(0, start, n),
                    None,
                    Reduction::Sum,
                    IGNORE,
                    0.0,
                )
                * &count;
            (&loss * scale).backward();
            total += loss.detach();
            start += n;
        }
        crate::shim::backward(&before_last, &flat.grad().view([b, t - 1, h]))?;
        Ok(total)
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
