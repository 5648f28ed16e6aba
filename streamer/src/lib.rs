//! flame-stream: the data server between token shards and trainers.
//!
//! The stream is pure functions of a job spec and a sample index: [`spec`] (the TOML job spec and its
//! fingerprint), [`source`] (datasets as documents, Megatron's train/valid/test split), [`epoch`]
//! (per-epoch document shuffle in O(1) memory, packing into windows, `cu_seqlens`), [`mix`] (per-token
//! mixing, within one window of the weights in every global batch), [`megatron`] (megatron-core's sample
//! order, bit for bit), [`raw_text`] and [`online`] (raw text tokenized by the server: prepared once, or
//! streamed with resume cursors) and [`stream`] (global sample `k`, and each rank's slice of a step).
//! [`protocol`] is the wire format and [`transport`] moves its frames; [`server`] serves it over TCP and
//! Unix sockets with per-client prefetch and [`shm`] rings for clients on the same host, keeping its open
//! [`jobs`] within a memory [`budget`] and, optionally, under a [`data_root`]; [`metrics`] exposes
//! what was served, and [`client`] (blocking) and [`async_client`] (tokio) are the Rust clients, two
//! drivers of one sans-IO [`client_core`].
#![warn(missing_docs)]

// The unit tests share `tests/raw.rs` with the integration tests, which name this crate.
#[cfg(test)]
extern crate self as flame_streamer;
#[cfg(test)]
#[path = "../tests/raw.rs"]
mod raw;

pub mod async_client;
pub mod budget;
pub mod client;
pub mod client_core;
pub mod cursor_log;
pub mod data_root;
pub mod epoch;
pub mod error;
pub mod file_cache;
pub mod jobs;
pub mod megatron;
pub mod metrics;
pub mod mix;
pub mod online;
pub mod protocol;
#[cfg(feature = "raw-text")]
pub mod raw_text;
pub mod server;
pub mod shm;
pub mod source;
pub mod spec;
pub mod stream;
pub mod transport;
