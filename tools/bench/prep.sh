#!/usr/bin/env bash
# The flame-prep benchmark (tools/bench/prep.py): builds flame-prep in release, creates the benchmarks'
# venv once (tools/setup-python.sh bench), then runs the ceiling, flame-prep and the peers side by side.
# Arguments go to prep.py (e.g. --tokenizers gpt2 --peers gigatoken). Takes ~15 minutes on 2 cores with all
# peers, ~1 minute with --peers gigatoken.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --quiet --bin flame-prep --example encode_ceiling --example stages
python="$(bash tools/setup-python.sh bench)"
exec "$python" tools/bench/prep.py "$@"
