//! Integration tests of the `flame-prep` binary, run as a user runs it.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(clippy::cast_possible_truncation)] // test values are small

mod bad_input;
mod cached;
mod cached_native;
mod chunking;
mod exactness;
mod fast_encoders;
mod general_split;
mod hub;
mod inspect;
mod megatron_peer;
mod multi_machine;
mod object_store;
mod progress;
mod resume;
mod tokenize_run;
mod tokenizer_fixtures;
mod util;
mod verify;
mod wordpiece;
