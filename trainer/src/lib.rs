//! flame-train: a tch (libtorch) trainer for flame's transformer configs, fed by flame-stream.
//!
//! [`config`] reads flame's model configs, [`schedule`] is torchtitan's warmup-stable-decay learning
//! rate, [`model`] the transformer (RMSNorm, RoPE, SwiGLU, MHA/GQA, varlen attention from `cu_seqlens`),
//! [`optim`] AdamW with checkpointable state, and [`train`] the run: flags, data, step, logs,
//! checkpoints and the Hugging Face export; [`parity`] writes what the comparison with `transformers`
//! reads.
#![warn(missing_docs)]

pub mod config;
pub mod dist;
pub mod model;
pub mod optim;
pub mod parity;
pub mod schedule;
pub mod shim;
pub mod tensorboard;
pub mod train;
