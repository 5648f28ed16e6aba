//! flame-train's integration tests, on the CPU: initialising a model from a Llama checkpoint (`convert`),
//! the fla ops' kernel launches against fla's own (`fla_launches`), GPT-2 (`gpt2`), the chunked token-mixing ops' layout invariants (`kernels`), the models
//! (`model`) and whole runs fed by a live flame-stream (`train`).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod convert;
mod fla_launches;
mod gpt2;
mod kernels;
mod linear;
mod model;
mod train;
mod util;
