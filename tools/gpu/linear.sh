#!/usr/bin/env bash
# flame-train's linear-attention models on the GPU machine, from binaries built on the CPU machine:
# 1. Parity with fla 0.6.0 (installed there from the wheels in $WHEELS: fla-core, flash-linear-attention,
#    einops): whole models' logits through the export loaded by fla, and each chunked op's output and
#    gradients against fla's kernels (tools/interop/fla_parity.py, trainer/examples/linear_parity.rs).
# 2. flame-train on flame's gla_340M, delta_net_340M and gated_deltanet_340M at batch 8 × 2048, fed by
#    flame-stream over shared memory: the log lines (tokens/s, memory, MFU by each model's own FLOPs).
# Usage: BIN=dir-with-flame-stream,flame-train,linear_parity WHEELS=dir bash tools/gpu/linear.sh [STEPS]
# (SKIP_PARITY=1 runs step 2 only, SKIP_TRAIN=1 step 1 only, SKIP_MODELS=1 leaves out the whole models'
# logits: fla autotunes every kernel for every new shape, minutes on an H100. MODELS="…" trains only
# those configs. flame-train finds fla's kernels in $FLAME_KERNELS, from tools/setup-kernels.sh.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../bench/gpu-env.sh"
steps="${1:-20}"
"$python" -m pip install --quiet --no-index --no-deps --target "$work/py" "${WHEELS:?}"/*.whl
export PYTHONPATH="$work/py${PYTHONPATH:+:$PYTHONPATH}"
parity="$root/tools/interop/fla_parity.py"

if [[ -z "${SKIP_PARITY:-}" ]]; then
    echo "== parity with fla 0.6.0 on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
    if [[ -z "${SKIP_MODELS:-}" ]]; then
        "$bin/linear_parity" models "$work/models" > /dev/null
        "$python" "$parity" models "$work/models"
    fi
    mkdir -p "$work/ops"
    "$python" "$parity" ops-gen "$work/ops"
    "$bin/linear_parity" ops "$work/ops/ops_in.safetensors" "$work/ops/ops_out.safetensors" > /dev/null
    "$python" "$parity" ops-check "$work/ops"
fi

if [[ -z "${SKIP_TRAIN:-}" ]]; then
    cat > "$work/job.toml" <<TOML
seed = 1
seq_len = 2048
varlen = false
micro_batch_size = 8
global_batch_size = 8
[[datasets]]
path = "$data"
TOML
    for model in ${MODELS:-gla_340M delta_net_340M gated_deltanet_340M}; do
        echo "== flame-train $model, 8 × 2048"
        "$bin/flame-train" --model.config "$root/configs/$model.json" \
            --data-endpoint "unix://$work/s.sock" --data-job "$work/job.toml" --job.dump_folder "$work/$model" \
            --training.batch_size 8 --training.seq_len 2048 --training.steps "$steps" --metrics.log_freq 5 \
            --lr_scheduler.warmup_steps 5 --optimizer.lr 3e-4 --checkpoint.enable_checkpoint false 2>&1 \
            | grep -v "Warning: " || true
    done
fi
