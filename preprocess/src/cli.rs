//! Command-line arguments. clap types live here only; commands receive plain values.

use std::ops::Range;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Turn text corpora into training tokens, and check what was written.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
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
