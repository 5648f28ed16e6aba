//! flame-train: a tch (libtorch) trainer for flame's model configs, fed by flame-stream.
//!
//! [`config`] reads flame's model configs; [`models`] builds them behind one trait (the transformer:
//! RMSNorm, RoPE, SwiGLU, MHA/GQA, varlen attention from `cu_seqlens`); [`optim`] is AdamW with
//! checkpointable state and [`schedule`] torchtitan's warmup-stable-decay learning rate. [`train`] is the
//! loop, from the flags of [`cli`]; around it sit [`data`] (batches from flame-stream), [`checkpoint`],
//! [`metrics`] (the log line, `metrics.jsonl`, [`tensorboard`] events), [`export`] (the Hugging Face
//! checkpoint) and [`dist`] (the ranks). [`shim`] binds what tch lacks; [`parity`] writes what the
//! comparison with `transformers` reads.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod convert;
pub mod crash;
pub mod data;
pub mod dist;
pub mod export;
pub mod flame_flags;
pub mod kernels;
pub mod metrics;
pub mod models;
pub mod named_data;
pub mod optim;
pub mod parity;
pub mod schedule;
pub mod shim;
pub mod tensorboard;
pub mod train;
