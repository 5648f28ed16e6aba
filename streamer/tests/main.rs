//! Integration tests of flame-stream: the stream's invariants and the server seen by clients.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // a failed unwrap is a failed test

mod client;
mod megatron;
mod online;
mod python;
mod raw;
mod raw_text;
mod remote;
mod server;
mod shared_server;
mod stream;
mod util;
