# Sourced by the GPU benchmarks (train.sh, multi-gpu.sh, scaling.sh), which run binaries built on the CPU
# machine: sets root, bin ($BIN, default target/release), data ($DATA, default the bundled fixture),
# python ($PYTHON, default the GPU machine's torch venv) and torchlib; puts torch's libraries on the
# library path; makes a work directory removed on exit; starts one flame-stream serving
# unix://$work/s.sock (its pid in $server) and waits until it listens; defines flame_train and summarize
# (below).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${BIN:-$root/target/release}"
data="$(cd "${DATA:-$root/tests/data/golden-mistral}" && pwd)"
python="${PYTHON:-/opt/torch/.venv/bin/python}"
torchlib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work="$(mktemp -d)"
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
coproc SERVER { exec "$bin/flame-stream" serve --listen "unix://$work/s.sock"; }
server=$SERVER_PID
read -r _ <&"${SERVER[0]}"

# flame_train NAME CONFIG SEQ_LEN BATCH CONTEXT VARLEN [FLAG...]: one flame-train run of $steps steps fed
# by the server; $work/NAME.json gets the mean of its log windows after the first two (start-up).
flame_train() {
    local name=$1 config=$2 seq_len=$3 batch=$4 context=$5 varlen=$6
    shift 6
    cat > "$work/$name.toml" <<TOML
seed = 1
seq_len = $seq_len
context_len = $context
varlen = $varlen
micro_batch_size = $batch
global_batch_size = $batch
[[datasets]]
path = "$data"
TOML
    local flags=("$@")
    [[ $varlen == true ]] && flags+=(--training.varlen)
    LD_LIBRARY_PATH="$torchlib" "$bin/flame-train" --model.config "$config" \
        --data-endpoint "unix://$work/s.sock" --data-job "$work/$name.toml" --job.dump_folder "$work/$name" \
        --training.batch_size "$batch" --training.seq_len "$seq_len" --training.context_len "$context" \
        --training.steps "$steps" --metrics.log_freq 10 --lr_scheduler.warmup_steps 10 --optimizer.lr 3e-4 \
        --checkpoint.enable_checkpoint false "${flags[@]}" 2>&1 | grep -v "Warning: " || true
    "$python" - "$work/$name/metrics.jsonl" "$name" > "$work/$name.json" <<'PY' || true
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
if not rows:
    raise SystemExit(f"{sys.argv[2]}: no measurements (the run failed)")
print(json.dumps({"peer": sys.argv[2], "tokens_per_s": sum(r["tps"] for r in rows) / len(rows),
                  "tflops": sum(r["tflops"] for r in rows) / len(rows),
                  "mfu_pct": sum(r["mfu_pct"] or 0 for r in rows) / len(rows),
                  "memory_gib": max(r["memory_gib"] or 0 for r in rows),
                  "data_loading_pct": max(r["data_loading_pct"] for r in rows)}))
PY
}

# summarize FLAME.json PEER.json...: one line per run (those that left a result): tokens/s, TFLOP/s, MFU
# (the peers' on the scale of flame-train's, from the first file's TFLOP/s and MFU), memory, the share of
# step time spent waiting for data, and flame-train's ratio to each peer (the runs not named flame-*).
summarize() {
    "$python" - "$@" <<'PY'
import json, os, sys
rows = [json.load(open(p)) for p in sys.argv[1:] if os.path.exists(p) and open(p).read().strip()]
flame = rows[0]["tokens_per_s"]
peak = rows[0]["tflops"] / rows[0]["mfu_pct"] * 100 if rows[0].get("mfu_pct") else None
for r in rows:
    mfu = f"  MFU {100 * r['tflops'] / peak:5.1f}%" if peak else ""
    memory = f"  {r['memory_gib']:.1f} GiB" if r.get("memory_gib") else ""
    waiting = f"  data waiting {r['data_loading_pct']:.2f}% of step time" if "data_loading_pct" in r else ""
    ratio = "" if r["peer"].startswith("flame") else f"  flame-train / this = {flame / r['tokens_per_s']:.2f}"
    print(f"{r['peer']:<22} {r['tokens_per_s']:>10.0f} tok/s  {r['tflops']:>7.1f} TFLOP/s{mfu}{ratio}{memory}{waiting}")
PY
}
