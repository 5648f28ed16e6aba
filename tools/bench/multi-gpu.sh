#!/usr/bin/env bash
# flame-train's data parallelism on a host with 2 GPUs (the nvidia-h200-x2 machine), from binaries built on
# the CPU machine. One flame-stream serves $DATA over shared memory; configs/transformer_340M.json, bf16,
# 8 × 2048 tokens per GPU per micro-batch. Three checks, one run:
#  1. 50 steps on 2 GPUs (global batch 16, flame-train --nproc-per-node 2) and 50 steps on 1 GPU with 2
#     micro-batches of gradient accumulation (the same 16 samples a step): the losses, step by step.
#  2. tokens/s on 2 GPUs against 1 GPU, the same per-GPU batch, no checkpoints: the scaling.
#  3. the 2-GPU run's step-25 checkpoint resumed on 1 GPU: steps 26..50 against the 2-GPU run's.
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0 ...), in the environment every rank inherits.
# Usage: BIN=dir-with-flame-stream,flame-train [DATA=dir] [STEPS=50] bash tools/bench/multi-gpu.sh
# (SPEED_FLAGS="--training.bucket_cap_mb 100 ..." adds flags to the 2-GPU speed run; ONLY_SPEED=1 runs
# check 2 alone.)
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source "$(dirname "${BASH_SOURCE[0]}")/gpu-env.sh"
steps="${STEPS:-50}"
config="$root/configs/transformer_340M.json"
for global in 8 16; do
    cat > "$work/job$global.toml" <<TOML
seed = 1
seq_len = 2048
varlen = false
micro_batch_size = 8
global_batch_size = $global
[[datasets]]
path = "$data"
TOML
done

# train NAME GLOBAL GPUS ACCUM STEPS [FLAG...]
train() {
    local name=$1 global=$2 gpus=$3 accum=$4 n=$5
    shift 5
    local visible=0
    [[ $gpus == 2 ]] && visible=0,1
    echo "== $name: $gpus GPU(s), accumulation $accum, global batch $global"
    CUDA_VISIBLE_DEVICES=$visible "$bin/flame-train" --model.config "$config" --nproc-per-node "$gpus" \
        --data-endpoint "unix://$work/s.sock" --data-job "$work/job$global.toml" --job.dump_folder "$work/$name" \
        --training.batch_size 8 --training.seq_len 2048 --training.gradient_accumulation_steps "$accum" \
        --training.steps "$n" --lr_scheduler.warmup_steps 10 --optimizer.lr 3e-4 "$@" 2>&1 \
        | grep -v "Warning: " | grep -E "^step: +(1|10|$n) |flame-train|rank|error|Error" || true
}
read -r -a speed_flags <<< "${SPEED_FLAGS:-}"
if [[ -n "${ONLY_SPEED:-}" ]]; then
    train speed1 8 1 1 60 --metrics.log_freq 10 --checkpoint.enable_checkpoint false
    train speed2 16 2 1 60 --metrics.log_freq 10 --checkpoint.enable_checkpoint false "${speed_flags[@]}"
    "$python" - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
tps = [sum(r["tps"] for r in rows[2:]) / len(rows[2:]) for rows in
       ([json.loads(l) for l in open(work / n / "metrics.jsonl")] for n in ("speed1", "speed2"))]
print(f"1 GPU {tps[0]:,.0f} tok/s; 2 GPUs {2 * tps[1]:,.0f}: {2 * tps[1] / tps[0]:.3f}x")
PY
    exit 0
fi
train two 16 2 1 "$steps" --metrics.log_freq 1 --checkpoint.interval 25 --checkpoint.enable_checkpoint true
train one 16 1 2 "$steps" --metrics.log_freq 1 --checkpoint.enable_checkpoint false
train speed1 8 1 1 60 --metrics.log_freq 10 --checkpoint.enable_checkpoint false
train speed2 16 2 1 60 --metrics.log_freq 10 --checkpoint.enable_checkpoint false "${speed_flags[@]}"
mkdir -p "$work/resumed/checkpoint"
cp -r "$work/two/checkpoint/step-25" "$work/resumed/checkpoint/"
train resumed 16 1 2 "$steps" --metrics.log_freq 1 --checkpoint.load_step -1 --checkpoint.enable_checkpoint false

"$python" - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
def rows(name):
    return [json.loads(l) for l in open(work / name / "metrics.jsonl")]
def losses(name):
    return {r["step"]: r["loss"] for r in rows(name)}
two, one, resumed = losses("two"), losses("one"), losses("resumed")
def compare(a, b, steps):
    return max(abs(a[s] - b[s]) / abs(b[s]) for s in steps)
steps = sorted(two)
d1 = compare(two, one, steps)
print(f"1. losses, 2 GPUs vs 1 GPU with accumulation, steps 1..{steps[-1]}: max relative difference {d1:.2e}"
      f" (step 1: {two[1]:.4f} vs {one[1]:.4f}; step {steps[-1]}: {two[steps[-1]]:.4f} vs {one[steps[-1]]:.4f})")
tps1 = sum(r["tps"] for r in rows("speed1")[2:]) / len(rows("speed1")[2:])
tps2 = sum(r["tps"] for r in rows("speed2")[2:]) / len(rows("speed2")[2:])
print(f"2. tokens/s: 1 GPU {tps1:,.0f}; 2 GPUs {2 * tps2:,.0f} ({tps2:,.0f} per GPU): {2 * tps2 / tps1:.2f}x"
      f" (data waiting {max(r['data_loading_pct'] for r in rows('speed2')[2:]):.2f}% of step time)")
later = [s for s in steps if s > 25]
state = json.load(open(work / "two" / "checkpoint" / "step-25" / "train_state.json"))
d3 = compare(resumed, two, later)
print(f"3. the 2-GPU step-25 checkpoint (samples consumed {state['samples_consumed']}) resumed on 1 GPU: "
      f"steps {later[0]}..{later[-1]}, max relative loss difference {d3:.2e}; resumed at step {min(resumed)}")
ok = d1 <= 1e-2 and 2 * tps2 / tps1 >= 1.9 and d3 <= 1e-2 and min(resumed) == 26
print("ok" if ok else "NOT MET")
PY
