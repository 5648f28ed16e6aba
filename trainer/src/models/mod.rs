//! The architectures flame-train builds, behind one small trait: a forward-backward pass over a batch
//! that reports when each backward segment's gradients are final (where data parallelism starts
//! reducing), the parameters' segments by name, the training FLOPs per token, and the Hugging Face
//! `config.json` of the export. The parameters themselves live in the [`tch::nn::VarStore`] the model
//! was built in, under the names of the export.
//!
//! [`inputs`] turns a batch into tensors; [`lm`] is the language model every architecture shares
//! (embedding, blocks, norm, output layer and loss), [`layers`] the layers they share; each architecture
//! is a file of its own with its token mixer: [`transformer`] (softmax attention), [`gla`] and
//! [`delta_rule`] (DeltaNet and Gated DeltaNet), [`gpt2`] (GPT-2's attention; its norms, MLP and
//! positions are options of [`lm`]).

pub mod delta_rule;
pub mod gla;
pub mod gpt2;
pub mod inputs;
pub mod layers;
pub mod lm;
pub mod transformer;

use tch::Tensor;
use tch::nn;

pub use inputs::{IGNORE, Inputs};
pub use lm::CausalLm;

use crate::config::{Mixer as MixerConfig, ModelConfig};
use lm::{Mixer, Names};

/// Tokens per chunk of the linear mixers (fla's chunk size).
pub const CHUNK: usize = 64;

/// fla's names (`model.embeddings`, `model.layers.N.attn`, `attn_norm`, `mlp_norm`).
pub const FLA_NAMES: Names = Names {
    root: "model",
    layers: "layers",
    embed: "embeddings",
    mixer: "attn",
    mixer_norm: "attn_norm",
    mlp_norm: "mlp_norm",
    norm: "norm",
};

/// The token mixer `config` describes, its parameters under `p`.
fn build_mixer(p: &nn::Path<'_>, config: &ModelConfig) -> Box<dyn Mixer> {
    match &config.mixer {
        MixerConfig::Attention(_) => Box::new(transformer::Attention::new(p, config)),
        MixerConfig::Gla(gla) => Box::new(gla::Gla::new(p, config, gla)),
        MixerConfig::DeltaRule(delta) => Box::new(delta_rule::DeltaRule::new(p, config, delta)),
        MixerConfig::Gpt2(_) => Box::new(gpt2::Attention::new(p, config)),
    }
}

/// The `config.json` of fla's own models: the config's keys as written, with the architecture fla
/// registers for its `model_type` (`GLAForCausalLM`, …), for `AutoModelForCausalLM` after `import fla`.
fn fla_config(config: &ModelConfig) -> serde_json::Value {
    let architecture = match config.model_type.as_str() {
        "gla" => "GLAForCausalLM",
        "delta_net" => "DeltaNetForCausalLM",
        "gated_deltanet" => "GatedDeltaNetForCausalLM",
        other => unreachable!("{other} is not one of fla's linear models"),
    };
    let mut keys = config.keys.clone();
    keys.insert("architectures".into(), serde_json::json!([architecture]));
    keys.insert("torch_dtype".into(), "float32".into());
    serde_json::Value::Object(keys)
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

/// What runs on the kernel build's kernels (`--model.kernels`): the linear models' token mixing on fla's,
/// and every model's loss ([`crate::kernels::fla::cross_entropy`]) and residual norms
/// ([`crate::kernels::residual_norm`]) fused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MixingKernels {
    /// For the linear models, the kernels where they can run (CUDA, a kernel build for the model's
    /// shapes), else libtorch; for the transformer and GPT-2, libtorch (their fused loss and norms are
    /// not yet measured on a GPU against the libtorch path: `Fla` runs them).
    Auto,
    /// fla-core's Triton kernels, compiled ahead of time ([`crate::kernels::fla`]); an error where
    /// they cannot run.
    Fla,
    /// libtorch ops: the chunked algorithms ([`crate::kernels::gla`], [`crate::kernels::delta_rule`])
    /// and libtorch's cross-entropy.
    Torch,
}

impl MixingKernels {
    /// Whether `config`'s model runs on the kernel build on `device`, and why (for the log): a linear
    /// model's token mixing, norms, convolutions, MLP and loss, the others' loss and residual norms.
    ///
    /// # Errors
    /// `Fla` where fla's kernels cannot run, saying why.
    pub fn resolve(
        self,
        config: &ModelConfig,
        device: tch::Device,
    ) -> Result<(bool, String), String> {
        let why_not = || -> Result<(), String> {
            if !device.is_cuda() {
                return Err(format!("the model is on {device:?}"));
            }
            let kernels = crate::kernels::cubin::Kernels::installed()?;
            crate::kernels::fla::check(kernels, config)
        };
        if self == Self::Torch {
            return Ok((false, "libtorch ops".into()));
        }
        if self == Self::Auto && !config.mixer.is_linear() {
            return Ok((
                false,
                "libtorch ops (--model.kernels fla fuses them on CUDA)".into(),
            ));
        }
        let what = if config.mixer.is_linear() {
            "fla's kernels"
        } else {
            "fla's and flame's fused kernels"
        };
        match (self, why_not()) {
            (_, Ok(())) => Ok((true, what.into())),
            (Self::Fla, Err(e)) => Err(format!("--model.kernels fla: {e}")),
            (_, Err(e)) => Ok((false, format!("libtorch ops ({e})"))),
        }
    }
}

/// A causal language model that flame-train trains.
pub trait Model: std::fmt::Debug {
    /// Forward and backward of one micro-batch: accumulates the gradients of `scale ×` its mean
    /// next-token cross-entropy into the parameters and returns that loss (unscaled, detached). Calls
    /// `on_segment(i)` after backward segment `i`, once the gradients of the parameters whose
    /// [`Model::segment_of`] is `i` are final.
    ///
    /// # Errors
    /// From `on_segment`, or when a backward pass fails.
    fn forward_backward(
        &self,
        inputs: &Inputs,
        scale: f64,
        checkpointing: Checkpointing,
        on_segment: &mut dyn FnMut(usize) -> Result<(), String>,
    ) -> Result<Tensor, String>;

    /// The backward segment after which the gradient of parameter `name` is final; `None` for a name
    /// that is not the model's.
    fn segment_of(&self, name: &str) -> Option<usize>;

    /// Logits `[B, T, vocab]` in float32.
    fn forward(&self, inputs: &Inputs) -> Tensor;

    /// Training FLOPs per token at `context_len` (forward and backward), for the log line's MFU.
    fn flops_per_token(&self, context_len: u32) -> u64;

    /// The `config.json` of the Hugging Face export.
    fn hf_config(&self) -> serde_json::Value;
}

/// The model `config` describes, with fresh weights in `vs`, its token mixing on fla's kernels when
/// `fla` (see [`MixingKernels::resolve`]).
pub fn build(vs: &nn::Path<'_>, config: &ModelConfig, fla: bool) -> Box<dyn Model> {
    let mut model = CausalLm::new(vs, config);
    model.set_fla_kernels(fla);
    Box::new(model)
}
