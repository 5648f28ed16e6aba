//! flame-stream: the data server between token shards and trainers.
//!
//! This crate holds the package layout only. The server, its protocol and its clients are issue #4;
//! until then the binary says so and exits with an error rather than pretend to serve.
#![warn(missing_docs)]

/// The issue that brings the server.
pub const TRACKING_ISSUE: u32 = 4;
