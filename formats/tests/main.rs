//! Integration tests of flame-formats: one binary, a module per topic.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // test values are small

mod bad_input;
mod manifest;
mod megatron_core;
mod packed;
mod roundtrip;
mod util;
