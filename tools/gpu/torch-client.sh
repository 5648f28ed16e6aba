#!/usr/bin/env bash
# The Python client's torch side (streamer/python/tests/check_torch.py) against a standalone flame-stream,
# on any machine with torch: the GPU machine (PYTHON=/opt/torch/.venv/bin/python), where the DataLoader
# also pins memory. Every test run checks the same on the CPU (streamer/tests/python.rs, in the test venv,
# with the job's end and the read-ahead seen through a proxy); this runs it on another torch build. Needs
# a built flame-stream (FLAME_STREAM, default target/release/flame-stream); serves
# tests/data/golden-mistral and compares with `flame-stream dump`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${FLAME_STREAM:-$root/target/release/flame-stream}"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
for micro in 1 2; do
    cat > "$work/job.toml" <<TOML
seed = 5
seq_len = 128
context_len = 64
micro_batch_size = $micro
global_batch_size = $((2 * micro))
[[datasets]]
path = "$root/tests/data/golden-mistral"
TOML
    coproc SERVER { exec "$bin" serve --listen "unix://$work/s.sock"; }
    server=$SERVER_PID
    read -r line <&"${SERVER[0]}"   # "listening on ...": the socket is bound
    echo "$line"
    "$bin" dump --endpoint "unix://$work/s.sock" --job "$work/job.toml" --rank 1 --world-size 2 --steps 4 \
        > "$work/expected.jsonl"
    # The job has no end: each case reads the 4 steps dumped, with 0, 2 and 3 workers, over the socket and
    # shared memory, in both layouts.
    "$python" - "$work" > "$work/plan.json" <<'PY'
import json, sys
work = sys.argv[1]
print(json.dumps({"cases": [
    {"endpoint": f"unix://{work}/s.sock", "job": f"{work}/job.toml", "rank": 1, "world_size": 2,
     "workers": workers, "shared_memory": shared_memory, "start_step": 0, "steps": 4, "layout": layout,
     "expected": f"{work}/expected.jsonl"}
    for workers in (0, 2, 3) for shared_memory in (None, 4) for layout in ("flat", "per_sample")]}))
PY
    "$python" "$root/streamer/python/tests/check_torch.py" "$work/plan.json"
    kill "$server"; wait "$server" 2>/dev/null || true
done
