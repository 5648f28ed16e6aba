//! The causal language model every architecture shares: an embedding, blocks of `x + mixer(norm(x))`
//! then `x + mlp(norm(x))` (pre-norm RMSNorm, fla's `GatedMLP`), a final norm and the output layer. Only
//! the token mixer differs between architectures ([`Mixer`]: softmax attention, GLA, the delta rules),
//! and the parameter names of the export ([`Names`]: Hugging Face Llama's for the transformer, fla's for
//! the others).

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::layers::{Rotary, chunked_head_backward, layer_swiglu, next_token_loss, rms_norm};
use super::{Checkpointing, Inputs, Model};
use crate::config::{Mixer as MixerConfig, ModelConfig};
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
    /// The embedding, under `model.`.
    pub embed: &'static str,
    /// The mixer, under `model.layers.N.`.
    pub mixer: &'static str,
    /// The norm before the mixer.
    pub mixer_norm: &'static str,
    /// The norm before the MLP.
    pub mlp_norm: &'static str,
}

struct Block {
    mixer_norm: Tensor,
    mixer: Box<dyn Mixer>,
    mlp_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// A causal language model of one of flame's architectures, its parameters in a [`nn::VarStore`].
pub struct CausalLm {
    config: ModelConfig,
    names: Names,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
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
    /// norms at one (fla's `_init_weights`; each mixer adds its own).
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
        let names = match &c.mixer {
            MixerConfig::Attention(_) => super::transformer::NAMES,
            _ => super::FLA_NAMES,
        };
        let model = vs / "model";
        let embed = (&model / names.embed).var("weight", &[v, h], std);
        let blocks = (0..c.num_hidden_layers)
            .map(|l| {
                let p = &model / "layers" / l;
                let mlp = &p / "mlp";
                Block {
                    mixer_norm: (&p / names.mixer_norm).var("weight", &[h], Init::Const(1.0)),
                    mixer: super::build_mixer(&(&p / names.mixer), c),
                    mlp_norm: (&p / names.mlp_norm).var("weight", &[h], Init::Const(1.0)),
                    gate: (&mlp / "gate_proj").var("weight", &[i, h], std),
                    up: (&mlp / "up_proj").var("weight", &[i, h], std),
                    down: (&mlp / "down_proj").var("weight", &[h, i], std),
                }
            })
            .collect();
        let norm = (&model / "norm").var("weight", &[h], Init::Const(1.0));
        let lm_head =
            (!c.tie_word_embeddings).then(|| (vs / "lm_head").var("weight", &[v, h], std));
        let rotary = matches!(c.mixer, MixerConfig::Attention(_))
            .then(|| super::transformer::rotary(c, vs.device()));
        Self {
            config: c.clone(),
            names,
            rotary,
            embed,
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
        let linear = self.rotary.is_none();
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
        Tensor::embedding(&self.embed, &inputs.tokens, padding_idx, false, false)
    }

    /// The final hidden states `[B, T, hidden]`, normalised.
    fn hidden(&self, inputs: &Inputs) -> Tensor {
        let context = self.context(inputs);
        let mut x = self.embed(inputs);
        for block in &self.blocks {
            x = self.block(block, &x, &context);
        }
        rms_norm(&x, &self.norm, self.config.norm_eps)
    }

    /// One block: `x + mixer(norm(x))`, then `+ mlp(norm(·))`.
    // `x = x + y`, not `x += y`: an in-place add would overwrite a tensor autograd still needs.
    #[allow(clippy::assign_op_pattern)]
    fn block(&self, block: &Block, x: &Tensor, context: &Context<'_>) -> Tensor {
        let eps = self.config.norm_eps;
        let x = x + block
            .mixer
            .forward(&rms_norm(x, &block.mixer_norm, eps), context);
        let hx = rms_norm(&x, &block.mlp_norm, eps);
        x + layer_swiglu(&hx, &block.gate, &block.up, &block.down, context)
    }

    /// Runs the linear mixers on fla's kernels (`on`) or on libtorch ops; see
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
        let mut x = embedded.detach().set_requires_grad(true);
        let mut layers = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let out = if full {
                tch::no_grad(|| self.block(block, &x, &context))
            } else {
                self.block(block, &x, &context)
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
                self.block(block, &input, &context)
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

    // Segment 0 is the output layer and final norm, `1 + (layers - 1 - i)` layer `i`, `layers + 1`
    // the embedding (tied to the output layer or not).
    fn segment_of(&self, name: &str) -> Option<usize> {
        let layers = self.blocks.len();
        if name == "lm_head.weight" || name == "model.norm.weight" {
            return Some(0);
        }
        if name.strip_prefix("model.")?.strip_prefix(self.names.embed) == Some(".weight") {
            return Some(layers + 1);
        }
        let i: usize = name
            .strip_prefix("model.layers.")?
            .split('.')
            .next()?
            .parse()
            .ok()?;
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
            _ => super::fla_config(&self.config),
        }
    }
}
