#!/usr/bin/env bash
# Issue 19's benchmark (tools/bench/online.py): builds flame-stream in release, creates the benchmarks'
# venv once (HF datasets, transformers), then runs a streaming job of flame-stream beside
# flame's online pipeline on the shared corpus. Arguments go to online.py (e.g. --steps 200).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --quiet -p flame-streamer --bin flame-stream
python="$(bash tools/setup-python.sh bench)"
exec "$python" tools/bench/online.py "$@"
