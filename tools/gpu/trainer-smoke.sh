#!/usr/bin/env bash
# flame-train on the GPU machine, from binaries built on the CPU machine (nothing is built there).
# 1. Parity: trainer/examples/parity.rs's exports and logits against Hugging Face transformers
#    (tools/interop/hf_parity.py; transformers installed from wheels in $WHEELS, no index).
# 2. flame-train on CUDA, fed by flame-stream over shared memory, on configs/transformer_340M.json with
#    batch 8 × 2048 (tokens of tests/data/golden-mistral): the log lines.
# Usage: BIN=dir-with-flame-stream,flame-train,parity WHEELS=dir bash tools/gpu/trainer-smoke.sh [STEPS]
# (SKIP_PARITY=1 runs step 2 only.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${BIN:-$root/target/release}"
python="${PYTHON:-/opt/torch/.venv/bin/python}"
steps="${1:-30}"
torchlib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work="$(mktemp -d)"
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

if [[ -z "${SKIP_PARITY:-}" ]]; then
    echo "== parity with transformers"
    "$python" -m pip install --quiet --no-index --find-links "${WHEELS:?}" --target "$work/py" transformers
    "$bin/parity" "$work/parity" > /dev/null
    PYTHONPATH="$work/py" "$python" "$root/tools/interop/hf_parity.py" "$work/parity"
fi

echo "== flame-train on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
cat > "$work/job.toml" <<TOML
seed = 1
seq_len = 2048
varlen = false
micro_batch_size = 8
global_batch_size = 8
[[datasets]]
path = "$root/tests/data/golden-mistral"
TOML
coproc SERVER { exec "$bin/flame-stream" serve --listen "unix://$work/s.sock"; }
server=$SERVER_PID
read -r line <&"${SERVER[0]}"
echo "$line"
"$bin/flame-train" --model.config "$root/configs/transformer_340M.json" \
    --data-endpoint "unix://$work/s.sock" --data-job "$work/job.toml" --job.dump_folder "$work/run" \
    --training.batch_size 8 --training.seq_len 2048 --training.steps "$steps" --metrics.log_freq 10 \
    --lr_scheduler.warmup_steps 10 --optimizer.lr 3e-4 --checkpoint.enable_checkpoint false
