//! Integration tests of flame-formats: one binary, a module per topic.

mod bad_input;
mod manifest;
mod megatron_core;
mod packed;
mod roundtrip;
mod util;
