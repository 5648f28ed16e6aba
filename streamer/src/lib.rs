//! flame-stream: the data server between token shards and trainers.
//!
//! This crate so far holds the stream itself, as pure functions of a job spec and a sample index:
//! [`spec`] (the TOML job spec and its fingerprint), [`source`] (datasets as documents, Megatron's
//! train/valid/test split), [`epoch`] (per-epoch document shuffle in O(1) memory, packing into windows,
//! `cu_seqlens`), [`mix`] (per-token mixing, within one window of the weights in every global batch) and
//! [`stream`] (global sample `k`, and each rank's slice of a step). The server, its protocol, shared
//! memory and the clients are the rest of issue #4; until then the binary says so and exits non-zero.
#![warn(missing_docs)]

pub mod client;
pub mod epoch;
pub mod error;
pub mod mix;
pub mod protocol;
pub mod server;
pub mod source;
pub mod spec;
pub mod stream;

/// The issue that brings the server.
pub const TRACKING_ISSUE: u32 = 4;
