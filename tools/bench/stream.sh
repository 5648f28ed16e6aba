#!/usr/bin/env bash
# The flame-stream benchmark (tools/bench/stream.py): builds the server and
# streamer/examples/throughput.rs in release, creates the benchmarks' venv once (it holds Grain, the
# peer), then runs flame-stream over shared memory and TCP beside Grain on the same tokens, and the
# start-up/resume measurement on 10^8 documents (streamer/examples/startup.rs; its index is built once).
# Arguments go to stream.py (e.g. --seconds 4). Takes ~2 minutes on 2 cores (plus ~2 the first time).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --quiet -p flame-streamer --bin flame-stream --example throughput --example startup
python="$(bash tools/setup-python.sh bench)"
exec "$python" tools/bench/stream.py "$@"
