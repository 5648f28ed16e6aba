//! The architectures flame-train builds, behind one small trait: a forward-backward pass over a batch
//! that reports when each backward segment's gradients are final (where data parallelism starts
//! reducing), the parameters' segments by name, the training FLOPs per token, and the Hugging Face
//! `config.json` of the export. The parameters themselves live in the [`tch::nn::VarStore`] the model
//! was built in, under the names of the export.
//!
//! [`inputs`] turns a batch into tensors, [`layers`] holds what the architectures share, and each
//! architecture is a file of its own ([`transformer`]).

pub mod inputs;
pub mod layers;
pub mod transformer;

use tch::Tensor;
use tch::nn;

pub use inputs::{IGNORE, Inputs};
pub use transformer::Transformer;

use crate::config::ModelConfig;

/// How the backward pass gets the forward pass's activations (torchtitan's
/// `--activation_checkpoint.mode`; its `selective` mode is not implemented).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpointing {
    /// Every activation is kept.
    None,
    /// Only each layer's input is kept; the layer is recomputed in the backward pass.
    Full,
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

/// The model `config` describes, with fresh weights in `vs`.
pub fn build(vs: &nn::Path<'_>, config: &ModelConfig) -> Box<dyn Model> {
    Box::new(Transformer::new(vs, config))
}
