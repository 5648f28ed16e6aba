#!/usr/bin/env bash
# flame-train's benchmark on the GPU machine, with binaries built on the CPU machine (nothing is built
# there): flame-stream serves tokens/data-golden-mistral, flame-train trains configs/transformer_340M.json
# at batch 8 × 2048 in bf16 autocast, then tools/bench/torch_reference.py trains the same model in PyTorch,
# eager and compiled; prints tokens/s, TFLOP/s and the ratios.
# Usage: BIN=dir-with-flame-stream,flame-train bash tools/bench/train.sh [STEPS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${BIN:-$root/target/release}"
python="${PYTHON:-/opt/torch/.venv/bin/python}"
steps="${1:-40}"
config="$root/configs/transformer_340M.json"
torchlib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
work="$(mktemp -d)"
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
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
read -r _ <&"${SERVER[0]}"
LD_LIBRARY_PATH="$torchlib" "$bin/flame-train" --model.config "$config" \
    --data-endpoint "unix://$work/s.sock" --data-job "$work/job.toml" --job.dump_folder "$work/run" \
    --training.batch_size 8 --training.seq_len 2048 --training.steps "$steps" --metrics.log_freq 10 \
    --lr_scheduler.warmup_steps 10 --optimizer.lr 3e-4 --checkpoint.enable_checkpoint false 2>&1 |
    grep -v "Warning: at::autocast" || true
# The windows after the first (which holds start-up) give flame-train's rate.
"$python" - "$work/run/metrics.jsonl" > "$work/flame.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
print(json.dumps({"peer": "flame-train", "tokens_per_s": sum(r["tps"] for r in rows) / len(rows),
                  "tflops": sum(r["tflops"] for r in rows) / len(rows),
                  "data_loading_pct": max(r["data_loading_pct"] for r in rows)}))
PY
"$python" "$root/tools/bench/torch_reference.py" "$config" --steps "$steps" > "$work/eager.json"
"$python" "$root/tools/bench/torch_reference.py" "$config" --steps "$steps" --compile > "$work/compile.json" 2> "$work/compile.err" || tail -5 "$work/compile.err"
"$python" - "$work"/flame.json "$work"/eager.json "$work"/compile.json <<'PY'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[1:] if open(p).read().strip()]
flame = rows[0]["tokens_per_s"]
for r in rows:
    extra = f"  data waiting {r['data_loading_pct']:.2f}% of step time" if "data_loading_pct" in r else ""
    print(f"{r['peer']:<14} {r['tokens_per_s']:>10.0f} tok/s  {r['tflops']:>7.1f} TFLOP/s  flame-train / this = {flame / r['tokens_per_s']:.2f}{extra}")
PY
