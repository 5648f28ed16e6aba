#!/usr/bin/env bash
# Issue 18's benchmark in one command: for each of its fifteen tokenizers (the four of ../shared/data/tokenizers
# and the fixtures of tools/fetch-tokenizers.sh), flame-prep end to end (2 workers, best of 3) against
# gigatoken's file API (where gigatoken loads the tokenizer) and the `tokenizers` library's raw-encode
# ceiling, on the unique corpus of tools/bench/unique-corpus.sh (142 MB of text, no document twice), with
# the peak RSS of each. Prints one row per tokenizer with its verdict against the issue's bar and writes
# results.json in ~/.cache/flame/bench/issue18 (tools/bench/prep.py --issue18 says what is measured).
#
# Arguments go to prep.py after the defaults, so they override them: `--tokenizers qwen3,gpt2` for a few,
# `--max-mib 8` for a small run, `--repeat 1`, `--work DIR`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --quiet --bin flame-prep --example encode_ceiling --example stages
python="$(bash tools/setup-python.sh bench)"
fixtures="$(bash tools/fetch-tokenizers.sh)"
corpus="$(bash tools/bench/unique-corpus.sh)"
exec "$python" tools/bench/prep.py --issue18 --corpus "$corpus" --fixtures "$fixtures" --tokenizers issue18 \
    --peers ceiling,gigatoken --no-packed --no-stages --long-document '' --workers 2 \
    --work "${FLAME_CACHE:-$HOME/.cache/flame}/bench/issue18" "$@"
