//! flame-train: a tch (libtorch) trainer for flame's transformer configs, fed by flame-stream.
//!
//! [`config`] reads flame's model configs, [`schedule`] is torchtitan's warmup-stable-decay learning
//! rate, [`model`] the transformer (RMSNorm, RoPE, SwiGLU, MHA/GQA, varlen attention from `cu_seqlens`).
#![warn(missing_docs)]

pub mod config;
pub mod model;
pub mod schedule;
