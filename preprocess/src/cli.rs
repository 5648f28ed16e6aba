//! Command-line arguments. clap types live here only; `config.rs` turns them into a validated `Config`.

use std::ops::Range;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::tokenize::BosPolicy;

const EXAMPLES: &str = "\
Examples:
  flame-prep --dataset sample --context_length 2048              # the bundled sample, packed windows
  flame-prep --dataset ./corpus/ --tokenizer ./mistral/tokenizer.json
  flame-prep --dataset 'dumps/*.jsonl.zst' --tokenizer gpt2/tokenizer.json --append-eod --bos never
  flame-prep inspect data/sample/default/train
  flame-prep verify data/sample/default/train

Output goes to OUTPUT/DATASET/NAME/SPLIT/: shard_00000.{bin,idx}, ... and manifest.json, written last.";

/// Turn text corpora into training tokens (Megatron .bin/.idx or packed varlen), and check what was written.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true, after_help = EXAMPLES)]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Inspect or verify instead of tokenizing.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Tokenizing (the default action).
    #[command(flatten)]
    pub tokenize: TokenizeArgs,
}

/// What to do with the final partial window of packed output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tail {
    /// Drop it (its token count goes into the manifest).
    Drop,
    /// Pad it to `--context_length` with `--pad-id`.
    Pad,
}

/// Arguments of the tokenizing run.
#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // independent on/off flags, as users type them
pub struct TokenizeArgs {
    /// `sample` (bundled public-domain text), or a local file, directory or glob of parquet, jsonl[.gz|.zst], arrow or txt files.
    #[arg(long, value_name = "DATASET", required = true)]
    pub dataset: Option<String>,
    /// Configuration name (an output path component).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Split: in a directory, files named like `train-*`, `train/…`, `*_train.*`.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Pack documents into windows of exactly N tokens with cu_seqlens (default: one document per sequence).
    #[arg(
        long = "context_length",
        visible_alias = "context-length",
        value_name = "N"
    )]
    pub context_length: Option<u32>,
    /// The final partial window of packed output.
    #[arg(long, value_enum, default_value_t = Tail::Drop)]
    pub tail: Tail,
    /// Token id used by `--tail pad` (default: the tokenizer's EOS, else 0).
    #[arg(long, value_name = "ID")]
    pub pad_id: Option<u32>,
    /// A tokenizer.json, a directory holding one, or a hub model id or short name (`gpt2`) whose tokenizer is fetched (default for `--dataset sample`: the bundled Mistral-7B tokenizer; else flame's, from the hub).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Column or JSON key with the text (default: `text`, else `content`).
    #[arg(long, value_name = "KEY")]
    pub text_key: Option<String>,
    /// Root of the output tree.
    #[arg(long, value_name = "DIR", default_value = "data")]
    pub output: PathBuf,
    /// BOS: what the tokenizer adds (flame), always, or never.
    #[arg(long, value_enum, default_value_t = BosPolicy::Tokenizer)]
    pub bos: BosPolicy,
    /// Append the tokenizer's EOS to every document (Megatron's --append-eod).
    #[arg(long)]
    pub append_eod: bool,
    /// Turn literal special-token strings in the text (`</s>`, `<|endoftext|>`) into special ids.
    #[arg(long)]
    pub parse_special_tokens: bool,
    /// Start a new shard once the current one holds this many tokens.
    #[arg(long, value_name = "N", default_value_t = 1 << 30)]
    pub shard_tokens: u64,
    /// Tokenizer threads (default: all cores). The output is the same for every value.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Count bad records (malformed JSON, a null or missing text, invalid UTF-8) in the summary instead of failing. An empty text is a document, not a bad record.
    #[arg(long)]
    pub skip_bad_records: bool,
    /// Replace a complete output instead of reporting it.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Shuffle documents globally (a seeded permutation, the same for every --workers and every run).
    #[arg(long)]
    pub shuffle: bool,
    /// Seed of `--shuffle`.
    #[arg(long, value_name = "SEED", default_value_t = 42, requires = "shuffle")]
    pub seed: u64,
    /// Split the input files into K contiguous parts (by size) for K machines; join with `flame-prep merge`.
    #[arg(long, value_name = "K", requires = "shard_index")]
    pub num_shards: Option<u32>,
    /// Which part this machine tokenizes, 0-based (`$SLURM_ARRAY_TASK_ID`, `$JOB_COMPLETION_INDEX`).
    #[arg(long, value_name = "I", requires = "num_shards")]
    pub shard_index: Option<u32>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print counts, dtype and a length histogram of a dataset, or dump its token ids.
    #[command(after_help = "\
Examples:
  flame-prep inspect out/fineweb-edu/sample-10BT/train          # an output directory (manifest.json)
  flame-prep inspect data/my-corpus_text_document               # one Megatron prefix
  flame-prep inspect data/shards --json                         # every PREFIX.idx in a directory
  flame-prep inspect data/my-corpus_text_document --dump --range 0..3")]
    Inspect(InspectArgs),
    /// Check every shard against its manifest (sizes, SHA-256, counts) and the format's invariants.
    #[command(after_help = "\
Exit status 0 only if everything checks out.

Examples:
  flame-prep verify out/fineweb-edu/sample-10BT/train
  flame-prep verify data/my-corpus_text_document")]
    Verify(VerifyArgs),
    /// Join the outputs of `--num-shards K --shard-index I` runs into exactly the bytes of a single run.
    #[command(after_help = "\
Examples:
  flame-prep merge data/fineweb-edu/sample-10BT/train      # reads part-*-of-*/ there, writes the shards beside them
  flame-prep merge data/fineweb-edu/sample-10BT/train --remove-parts")]
    Merge(MergeArgs),
}

/// Arguments of `merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The output directory of the job (the parent of its `part-IIIII-of-KKKKK/` directories).
    #[arg(value_name = "DIR")]
    pub path: PathBuf,
    /// Delete the part directories after a successful merge.
    #[arg(long)]
    pub remove_parts: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A directory with manifest.json, a dataset prefix (PREFIX.idx + PREFIX.bin), or a directory of prefixes.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Print the summary as one JSON object.
    #[arg(long, conflicts_with = "dump")]
    pub json: bool,
    /// Print one JSON array of token ids per sequence, one per line.
    #[arg(long)]
    pub dump: bool,
    /// Sequences to dump: `A..B` (half-open), `A..` or `..B`; global across shards.
    #[arg(long, value_name = "A..B", value_parser = parse_range, requires = "dump")]
    pub range: Option<Range<u64>>,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A directory with manifest.json, a dataset prefix, or a directory of prefixes.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, A.. or ..B, got {text:?}"))?;
    let number = |s: &str, default: u64| -> Result<u64, String> {
        if s.is_empty() {
            Ok(default)
        } else {
            s.parse()
                .map_err(|_| format!("{s:?} is not a non-negative integer"))
        }
    };
    let range = number(start, 0)?..number(end, u64::MAX)?;
    if range.start > range.end {
        return Err(format!("range {text} runs backwards"));
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_with_open_ends() {
        assert_eq!(parse_range("2..5"), Ok(2..5));
        assert_eq!(parse_range("..5"), Ok(0..5));
        assert_eq!(parse_range("7.."), Ok(7..u64::MAX));
        assert!(parse_range("5..2").is_err());
        assert!(parse_range("5").is_err());
        assert!(parse_range("a..b").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
