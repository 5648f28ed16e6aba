//! The causal language model every architecture shares: an embedding, blocks of `x + mixer(norm(x))`
//! then `x + mlp(norm(x))` (pre-norm RMSNorm, fla's `GatedMLP`), a final norm and the output layer. The
//! token mixer differs between architectures ([`Mixer`]: softmax attention, GLA, the delta rules, GPT-2's
//! attention), and the parameter names of the export ([`Names`]: Hugging Face Llama's for the
//! transformer, fla's for the linear models, `GPT2LMHeadModel`'s for GPT-2). GPT-2 also has its own
//! norms (LayerNorm with biases), MLP (GELU with biases) and learned positions ([`Norm`], [`Mlp`]).

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::layers::{
    Rotary, chunked_head_backward, gelu_mlp, layer_norm, layer_swiglu, next_token_loss, rms_norm,
};
use super::{Checkpointing, Inputs, Model};
use crate::config::{Gelu, Mixer as MixerConfig, ModelConfig};
use crate::kernels::fla::Varlen;
use crate::kernels::layout::ChunkLayout;

/// What a token mixer reads besides its input: the batch, and what is computed once per batch for
/// every layer (RoPE's tables, the chunk layout of the documents).
#[derive(Debug)]
pub struct Context<'a> {
    /// The batch.
    pub inputs: &'a Inputs,
    /// RoPE's cosines and sines at the inputs' positions, for softmax attention.
    pub rope: Option<(Tensor, Tensor)>,
    /// The documents cut into chunks, for the linear mixers on libtorch ops.
    pub layout: Option<ChunkLayout>,
    /// The documents as fla's kernels take them, when the linear mixers run on those.
    pub fla: Option<Varlen>,
}

/// A block's token mixer: `[B, T, hidden]` (the normalised input) to `[B, T, hidden]` (before the
/// residual add), its parameters created under the block's mixer path.
pub trait Mixer: std::fmt::Debug {
    /// The mixer's output.
    fn forward(&self, x: &Tensor, context: &Context<'_>) -> Tensor;
}

/// Where an architecture's parameters live, as its Hugging Face export names them.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    /// The model's own parameters, under this (`model`), the output layer beside it.
    pub root: &'static str,
    /// The blocks, under `root.layers.N`.
    pub layers: &'static str,
    /// The embedding, under `root.`.
    pub embed: &'static str,
    /// The mixer, under a block.
    pub mixer: &'static str,
    /// The norm before the mixer.
    pub mixer_norm: &'static str,
    /// The norm before the MLP.
    pub mlp_norm: &'static str,
    /// The final norm, under `root.`.
    pub norm: &'static str,
}

/// A norm's parameters: RMSNorm's weight, or LayerNorm's weight and bias (GPT-2's).
#[derive(Debug)]
pub struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Norm {
    /// A norm of width `h` under `p`: weight one, bias zero.
    fn new(p: &nn::Path<'_>, h: i64, with_bias: bool) -> Self {
        Self {
            weight: p.var("weight", &[h], Init::Const(1.0)),
            bias: with_bias.then(|| p.var("bias", &[h], Init::Const(0.0))),
        }
    }

    fn forward(&self, x: &Tensor, eps: f64) -> Tensor {
        match &self.bias {
            Some(bias) => layer_norm(x, &self.weight, bias, eps),
            None => rms_norm(x, &self.weight, eps),
        }
    }
}

/// A block's MLP: fla's `GatedMLP` (SwiGLU, no biases), or GPT-2's (`c_fc`, GELU, `c_proj`, biases).
#[derive(Debug)]
pub enum Mlp {
    /// `down(silu(gate(x)) · up(x))`.
    Gated {
        /// `gate_proj`.
        gate: Tensor,
        /// `up_proj`.
        up: Tensor,
        /// `down_proj`.
        down: Tensor,
    },
    /// `c_proj(gelu(c_fc(x)))`, weights `[in, out]`.
    Gelu {
        /// `c_fc`'s weight and bias.
        fc: (Tensor, Tensor),
        /// `c_proj`'s weight and bias.
        proj: (Tensor, Tensor),
        /// The activation's form.
        gelu: Gelu,
    },
}

impl Mlp {
    /// The MLP of `config` under `p` (a block's `mlp`), initialised as its architecture does.
    fn new(p: &nn::Path<'_>, config: &ModelConfig) -> Self {
        let std = Init::Randn {
            mean: 0.0,
            stdev: config.initializer_range,
        };
        let (h, i) = (
            i64::from(config.hidden_size),
            i64::from(config.intermediate_size),
        );
        match config.gpt2() {
            None => Self::Gated {
                gate: (p / "gate_proj").var("weight", &[i, h], std),
                up: (p / "up_proj").var("weight", &[i, h], std),
                down: (p / "down_proj").var("weight", &[h, i], std),
            },
            Some(gpt2) => {
                let (fc, proj) = (p / "c_fc", p / "c_proj");
                Self::Gelu {
                    fc: (
                        fc.var("weight", &[h, i], std),
                        fc.var("bias", &[i], Init::Const(0.0)),
                    ),
                    proj: (
                        proj.var("weight", &[i, h], super::gpt2::residual_init(config)),
                        proj.var("bias", &[h], Init::Const(0.0)),
                    ),
                    gelu: gpt2.activation,
                }
            }
        }
    }

    fn forward(&self, x: &Tensor, context: &Context<'_>) -> Tensor {
        match self {
            Self::Gated { gate, up, down } => layer_swiglu(x, gate, up, down, context),
            Self::Gelu { fc, proj, gelu } => gelu_mlp(x, (&fc.0, &fc.1), (&proj.0, &proj.1), *gelu),
        }
    }
}

struct Block {
    mixer_norm: Norm,
    mixer: Box<dyn Mixer>,
    mlp_norm: Norm,
    mlp: Mlp,
}

/// The residual stream between blocks: `residual + branch`, the branch (the last block's MLP output)
/// not added yet, for the next norm adds it ([`CausalLm::add_norm`]); before the first block the
/// embedding alone.
#[derive(Debug)]
struct Stream {
    residual: Tensor,
    branch: Option<Tensor>,
}

impl Stream {
    fn tensors(&self) -> Vec<&Tensor> {
        std::iter::once(&self.residual)
            .chain(self.branch.as_ref())
            .collect()
    }

    /// The same values as leaves of a new graph, each with a gradient.
    fn leaves(&self) -> Self {
        let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
        Self {
            residual: leaf(&self.residual),
            branch: self.branch.as_ref().map(leaf),
        }
    }

    /// The gradients accumulated in the leaves of [`Stream::leaves`], in [`Stream::tensors`]' order.
    fn grads(&self) -> Vec<Tensor> {
        self.tensors().into_iter().map(Tensor::grad).collect()
    }
}

/// A causal language model of one of flame's architectures, its parameters in a [`nn::VarStore`].
pub struct CausalLm {
    config: ModelConfig,
    names: Names,
    embed: Tensor,
    /// GPT-2's learned positions (`wpe`).
    positions: Option<Tensor>,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Option<Tensor>,
    /// RoPE's frequencies, for softmax attention.
    rotary: Option<Rotary>,
    /// Label positions per chunk of the output layer and loss.
    loss_chunk: i64,
    fla_kernels: bool,
}

impl std::fmt::Debug for CausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLm")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CausalLm {
    /// A model of `config` with fresh weights in `vs`: every matrix normal with `initializer_range`,
    /// norms at one, biases at zero (fla's and `transformers`' `_init_weights`; each mixer adds its own).
    pub fn new(vs: &nn::Path<'_>, config: &ModelConfig) -> Self {
        let c = config;
        let std = Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        let (h, v) = (i64::from(c.hidden_size), i64::from(c.vocab_size));
        let names = match &c.mixer {
            MixerConfig::Attention(_) => super::transformer::NAMES,
            MixerConfig::Gpt2(_) => super::gpt2::NAMES,
            _ => super::FLA_NAMES,
        };
        let norm_bias = c.gpt2().is_some();
        let model = vs / names.root;
        let embed = (&model / names.embed).var("weight", &[v, h], std);
        let positions = c
            .gpt2()
            .map(|g| (&model / "wpe").var("weight", &[i64::from(g.n_positions), h], std));
        let blocks = (0..c.num_hidden_layers)
            .map(|l| {
                let p = &model / names.layers / l;
                Block {
                    mixer_norm: Norm::new(&(&p / names.mixer_norm), h, norm_bias),
                    mixer: super::build_mixer(&(&p / names.mixer), c),
                    mlp_norm: Norm::new(&(&p / names.mlp_norm), h, norm_bias),
                    mlp: Mlp::new(&(&p / "mlp"), c),
                }
            })
            .collect();
        let norm = Norm::new(&(&model / names.norm), h, norm_bias);
        let lm_head =
            (!c.tie_word_embeddings).then(|| (vs / "lm_head").var("weight", &[v, h], std));
        let rotary = matches!(c.mixer, MixerConfig::Attention(_))
            .then(|| super::transformer::rotary(c, vs.device()));
        Self {
            config: c.clone(),
            names,
            rotary,
            embed,
            positions,
            blocks,
            norm,
            lm_head,
            // About 2^28 logits (half a gigabyte in bfloat16) per chunk: 8192 rows of a 32k vocabulary.
            loss_chunk: (1i64 << 28) / v.max(1),
            fla_kernels: false,
        }
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Logits `[B, T, vocab]` in the compute dtype (bfloat16 under autocast).
    fn logits(&self, inputs: &Inputs) -> Tensor {
        self.hidden(inputs).linear(self.head(), None::<Tensor>)
    }

    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// What every layer's mixer reads, computed once per batch.
    fn context<'a>(&self, inputs: &'a Inputs) -> Context<'a> {
        let rope = self.rotary.as_ref().map(|r| r.tables(&inputs.positions));
        // The linear mixers read one of the two: fla's kernels the flat documents, the libtorch ops
        // the chunk layout.
        let linear = self.config.mixer.is_linear();
        let (seq_len, device) = (inputs.seq_len(), inputs.tokens.device());
        let fla = (linear && self.fla_kernels)
            .then(|| Varlen::new(&inputs.documents, seq_len, super::CHUNK, device));
        let layout = (linear && !self.fla_kernels)
            .then(|| ChunkLayout::new(&inputs.documents, seq_len, super::CHUNK, device));
        Context {
            inputs,
            rope,
            layout,
            fla,
        }
    }

    fn embed(&self, inputs: &Inputs) -> Tensor {
        // fla's `nn.Embedding(..., padding_idx=pad_token_id)`: the lookup never trains that row.
        let padding_idx = self.config.pad_token_id.map_or(-1, i64::from);
        let tokens = Tensor::embedding(&self.embed, &inputs.tokens, padding_idx, false, false);
        match &self.positions {
            Some(wpe) => tokens + Tensor::embedding(wpe, &inputs.positions, -1, false, false),
            None => tokens,
        }
    }

    /// The final hidden states `[B, T, hidden]`, normalised.
    fn hidden(&self, inputs: &Inputs) -> Tensor {
        let context = self.context(inputs);
        let mut x = Stream {
            residual: self.embed(inputs),
            branch: None,
        };
        for block in &self.blocks {
            x = self.block(block, &x, &context);
        }
        self.add_norm(&self.norm, &x).0
    }

    /// One block: `x + mixer(norm(x))`, then `+ mlp(norm(·))`, the MLP's output left for the next norm
    /// to add.
    fn block(&self, block: &Block, x: &Stream, context: &Context<'_>) -> Stream {
        let (normed, h) = self.add_norm(&block.mixer_norm, x);
        let x = Stream {
            branch: Some(block.mixer.forward(&normed, context)),
            residual: h,
        };
        let (normed, h) = self.add_norm(&block.mlp_norm, &x);
        Stream {
            branch: Some(block.mlp.forward(&normed, context)),
            residual: h,
        }
    }

    /// `(norm(s), s)` of the stream's sum `s = residual + branch`: in one fused kernel each way
    /// ([`crate::kernels::residual_norm`]) where the model runs on its kernels and the branch is bf16
    /// (autocast), else the add then `norm`.
    fn add_norm(&self, norm: &Norm, x: &Stream) -> (Tensor, Tensor) {
        let eps = self.config.norm_eps;
        let Some(branch) = &x.branch else {
            return (norm.forward(&x.residual, eps), x.residual.shallow_clone());
        };
        if self.fla_kernels && branch.kind() == Kind::BFloat16 && x.residual.kind() == Kind::Float {
            return crate::kernels::residual_norm::residual_norm(
                branch,
                &x.residual,
                &norm.weight,
                norm.bias.as_ref(),
                eps,
            )
            .expect("the fused residual norm (its build was checked)");
        }
        let sum = &x.residual + branch;
        (norm.forward(&sum, eps), sum)
    }

    /// Runs the linear mixers and the loss on fla's kernels (`on`) or on libtorch ops; see
    /// [`super::MixingKernels::resolve`].
    pub fn set_fla_kernels(&mut self, on: bool) {
        self.fla_kernels = on;
    }

    /// Sets how many label positions the loss takes at a time (see [`Model::forward_backward`]).
    pub fn set_loss_chunk(&mut self, rows: i64) {
        self.loss_chunk = rows.max(1);
    }

    /// Mean next-token cross-entropy over the labels that are not [`super::IGNORE`].
    pub fn loss(&self, inputs: &Inputs) -> Tensor {
        next_token_loss(&self.logits(inputs), &inputs.labels)
    }
}

impl Model for CausalLm {
    // The backward pass runs segment by segment (see `segment_of`). The output layer and the loss run
    // over a few thousand label positions at a time, each chunk's logits freed after its backward (a
    // fused linear cross-entropy), so that `[tokens, vocab]` logits never exist whole. With
    // `Checkpointing::Full`, only each layer's input is kept from the forward pass and the layer is
    // recomputed in the backward pass (torchtitan's full activation checkpointing): about a third more
    // compute for a fraction of the memory.
    fn forward_backward(
        &self,
        inputs: &Inputs,
        scale: f64,
        checkpointing: Checkpointing,
        on_segment: &mut dyn FnMut(usize) -> Result<(), String>,
    ) -> Result<Tensor, String> {
        let context = self.context(inputs);
        let full = checkpointing == Checkpointing::Full;
        // The forward pass, cut at every layer: each layer's input is a leaf of its own graph, so the
        // backward pass can be taken one layer at a time.
        let embedded = if full {
            tch::no_grad(|| self.embed(inputs))
        } else {
            self.embed(inputs)
        };
        let embedded = Stream {
            residual: embedded,
            branch: None,
        };
        let mut x = embedded.leaves();
        let mut layers = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let out = if full {
                tch::no_grad(|| self.block(block, &x, &context))
            } else {
                self.block(block, &x, &context)
            };
            let next = out.leaves();
            layers.push((std::mem::replace(&mut x, next), out));
        }
        let hidden = self.add_norm(&self.norm, &x).0;
        let loss = chunked_head_backward(
            &hidden,
            self.head(),
            &inputs.labels,
            scale,
            self.loss_chunk,
            self.fla_kernels,
        )?;
        on_segment(0)?;
        let mut grads = x.grads();
        for (done, (block, (input, out))) in self.blocks.iter().zip(layers).rev().enumerate() {
            let out = if full {
                self.block(block, &input, &context)
            } else {
                out
            };
            let grads_of: Vec<&Tensor> = grads.iter().collect();
            crate::shim::backward_many(&out.tensors(), &grads_of)?;
            drop(out);
            on_segment(done + 1)?;
            grads = input.grads();
        }
        let embedded = if full {
            self.embed(inputs)
        } else {
            embedded.residual
        };
        crate::shim::backward(&embedded, &grads[0])?;
        on_segment(self.blocks.len() + 1)?;
        Ok(loss)
    }

    // Segment 0 is the output layer and final norm, `1 + (layers - 1 - i)` layer `i`, `layers + 1`
    // the embedding (tied to the output layer or not) and GPT-2's positions.
    fn segment_of(&self, name: &str) -> Option<usize> {
        let layers = self.blocks.len();
        if name == "lm_head.weight" {
            return Some(0);
        }
        let rest = name.strip_prefix(self.names.root)?.strip_prefix('.')?;
        let (module, param) = rest.split_once('.')?;
        let norm_param = |p: &str| p == "weight" || (p == "bias" && self.norm.bias.is_some());
        if module == self.names.norm && norm_param(param) {
            return Some(0);
        }
        if (module == self.names.embed || (module == "wpe" && self.positions.is_some()))
            && param == "weight"
        {
            return Some(layers + 1);
        }
        if module != self.names.layers {
            return None;
        }
        let i: usize = param.split('.').next()?.parse().ok()?;
        (i < layers).then(|| layers - i)
    }

    fn forward(&self, inputs: &Inputs) -> Tensor {
        self.logits(inputs).to_kind(Kind::Float)
    }

    fn flops_per_token(&self, context_len: u32) -> u64 {
        self.config.flops_per_token(context_len)
    }

    fn hf_config(&self) -> serde_json::Value {
        match &self.config.mixer {
            MixerConfig::Attention(_) => super::transformer::hf_config(&self.config),
            MixerConfig::Gpt2(_) => super::gpt2::hf_config(&self.config),
            _ => super::fla_config(&self.config),
        }
    }
}
