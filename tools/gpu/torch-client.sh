#!/usr/bin/env bash
# The Python client's torch side (streamer/python/tests/check_torch.py) on a machine with torch (the GPU
# machine: PYTHON=/opt/torch/.venv/bin/python). Needs a built flame-stream (FLAME_STREAM, default
# target/release/flame-stream); serves tests/data/golden-mistral and compares with `flame-stream dump`.
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
    "$python" "$root/streamer/python/tests/check_torch.py" "unix://$work/s.sock" "$work/job.toml" "$work/expected.jsonl"
    kill "$server"; wait "$server" 2>/dev/null || true
done
