//! flame-prep: tokenize text corpora into Megatron `.bin/.idx` or packed varlen shards, and inspect and
//! verify them.
//!
//! A run ([`run::run`]) resolves the inputs ([`source`]), loads a tokenizer ([`tokenize::TextEncoder`]),
//! drives the reader → tokenizer workers → writer [`pipeline`], and writes numbered shards
//! ([`shard::ShardSink`]) plus `manifest.json`. The output bytes do not depend on the number of workers.
#![warn(missing_docs)]

pub mod added;
pub mod bpe;
pub mod byte_bpe;
pub mod cached;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod inspect;
pub mod merge;
pub mod pipeline;
pub mod pretok;
pub mod probe;
pub mod progress;
pub mod restream;
pub mod run;
pub mod sample;
pub mod shard;
pub mod source;
pub mod spm_bpe;
pub mod tokenize;
pub mod verify;
pub mod wordpiece;
