#!/usr/bin/env bash
# flame-train's data-parallel scaling on one host, in one device call, from binaries built on the CPU
# machine: for each config (configs/transformer_340M.json and transformer_1B.json), tokens/s on 1, 2, 4
# and 8 GPUs (those of them the host has; $GPUS overrides, e.g. GPUS="1 2") with the same per-GPU batch
# ($BATCH × 2048, default 8), fed by one flame-stream on the host over shared memory. Prints, per run,
# tokens/s in all and per GPU, the scaling efficiency (tokens/s ÷ (GPUs × the 1-GPU tokens/s)), the
# share of step time spent waiting for data (the largest logged), and the CPU the flame-stream process
# used while serving every rank (cores: its user + system time over the run's wall time). The verdict
# is on the largest GPU count: efficiency at least 90% and data waiting below 1%.
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0 ...), in the environment every rank inherits.
# Usage: BIN=dir-with-flame-stream,flame-train [DATA=dir] [STEPS=40] [CONFIGS="340M 1B"] bash tools/bench/scaling.sh
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source "$(dirname "${BASH_SOURCE[0]}")/gpu-env.sh"
steps="${STEPS:-40}"
batch="${BATCH:-8}"
available="$(nvidia-smi -L | wc -l)"
read -r -a counts <<< "${GPUS:-1 2 4 8}"
read -r -a configs <<< "${CONFIGS:-340M 1B}"
ticks="$(getconf CLK_TCK)"
echo "host: $available GPU(s) ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)), $(nproc) CPUs"

# The flame-stream process's CPU seconds so far (user + system).
server_cpu() {
    awk -v t="$ticks" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$server/stat"
}

for model in "${configs[@]}"; do
    for gpus in "${counts[@]}"; do
        if ((gpus > available)); then
            echo "== $model on $gpus GPUs: skipped, the host has $available"
            continue
        fi
        name="$model-$gpus"
        cat > "$work/$name.toml" <<TOML
seed = 1
seq_len = 2048
varlen = false
micro_batch_size = $batch
global_batch_size = $((batch * gpus))
[[datasets]]
path = "$data"
TOML
        echo "== $model on $gpus GPU(s)"
        cpu0="$(server_cpu)"
        start="$(date +%s.%N)"
        CUDA_VISIBLE_DEVICES="$(seq -s, 0 $((gpus - 1)))" "$bin/flame-train" \
            --model.config "$root/configs/transformer_$model.json" --nproc-per-node "$gpus" \
            --data-endpoint "unix://$work/s.sock" --data-job "$work/$name.toml" --job.dump_folder "$work/$name" \
            --training.batch_size "$batch" --training.seq_len 2048 --training.steps "$steps" \
            --lr_scheduler.warmup_steps 10 --optimizer.lr 3e-4 --metrics.log_freq 10 \
            --checkpoint.enable_checkpoint false 2>&1 | grep -v "Warning: " | grep -E "^step: +$steps |error|Error" || true
        end="$(date +%s.%N)"
        cpu1="$(server_cpu)"
        echo "{\"name\": \"$name\", \"model\": \"$model\", \"gpus\": $gpus, \"wall\": $(awk "BEGIN { print $end - $start }"), \"server_cpu\": $(awk "BEGIN { print $cpu1 - $cpu0 }")}" >> "$work/runs.jsonl"
    done
done

"$python" - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
runs = [json.loads(l) for l in open(work / "runs.jsonl")]
print(f"\n{'config':>6} {'GPUs':>4} {'tokens/s':>11} {'per GPU':>9} {'efficiency':>10} {'data wait':>9} "
      f"{'flame-stream CPU (s / wall s = cores)':>38}")
verdicts = {}
for model in dict.fromkeys(r["model"] for r in runs):
    base = None
    for run in [r for r in runs if r["model"] == model]:
        path = work / run["name"] / "metrics.jsonl"
        if not path.exists():
            print(f"{model:>6} {run['gpus']:>4}  failed (no metrics)")
            continue
        rows = [json.loads(l) for l in open(path)][1:]  # the first window holds the start-up
        per_gpu = sum(r["tps"] for r in rows) / len(rows)
        total = per_gpu * run["gpus"]
        if run["gpus"] == 1:
            base = per_gpu
        efficiency = total / (run["gpus"] * base) if base else float("nan")
        wait = max(r["data_loading_pct"] for r in rows)
        cores = run["server_cpu"] / run["wall"]
        print(f"{model:>6} {run['gpus']:>4} {total:>11,.0f} {per_gpu:>9,.0f} {efficiency:>9.1%} {wait:>8.2f}% "
              f"{run['server_cpu']:>15.2f} / {run['wall']:>5.1f} = {cores:.4f} cores")
        verdicts[model] = (run["gpus"], efficiency, wait)
for model, (gpus, efficiency, wait) in verdicts.items():
    ok = efficiency >= 0.9 and wait < 1.0
    print(f"{model} at {gpus} GPUs: efficiency {efficiency:.1%}, data wait {wait:.2f}%: "
          f"{'meets' if ok else 'MISSES'} the >= 90%, < 1% targets")
PY
