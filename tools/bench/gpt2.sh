#!/usr/bin/env bash
# flame-train's GPT-2 benchmark on the GPU machine (issue 24), with binaries built on the CPU machine:
# flame-stream serves $DATA (a flame-prep output; tokenize it with GPT-2's tokenizer), flame-train trains
# configs/gpt2-small.json at $BATCH × 1024 (default 16: flash-attention's per-GPU batch for gpt2s on GPUs
# under 24 GB) in bf16 autocast, and tools/bench/hf_gpt2.py trains transformers' GPT2LMHeadModel from the
# same file, eager and under torch.compile, at the same shape. flame-train runs twice: with
# --model.kernels fla (fla's fused loss and flame's fused residual norms, from the kernel build in
# $FLAME_KERNELS or tools/setup-kernels.sh's) and with --model.kernels torch (libtorch's, the default for
# GPT-2); tools/bench/compare_losses.py compares the two runs' losses.
# Prints tokens/s, TFLOP/s and MFU (one count for all), memory, the share of step time spent waiting for
# data, and the ratios.
# Usage: BIN=dir-with-flame-stream,flame-train DATA=dir [BATCH=16] [CONFIG=configs/gpt2-small.json]
#        bash tools/bench/gpt2.sh [STEPS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu-env.sh"
steps="${1:-40}"
config="$root/${CONFIG:-configs/gpt2-small.json}"
batch="${BATCH:-16}"

flame_train flame-train "$config" 1024 "$batch" 1024 false --model.kernels fla
flame_train flame-train-torch-ops "$config" 1024 "$batch" 1024 false --model.kernels torch
"$python" "$root/tools/bench/compare_losses.py" "$work"/flame-train/metrics.jsonl \
    "$work"/flame-train-torch-ops/metrics.jsonl || true
for mode in eager compile; do
    flag=()
    [[ $mode == compile ]] && flag=(--compile)
    "$python" "$root/tools/bench/hf_gpt2.py" "$config" --batch "$batch" --steps "$steps" "${flag[@]}" \
        > "$work/$mode.json" 2> "$work/$mode.err" || tail -5 "$work/$mode.err"
done
summarize "$work"/flame-train.json "$work"/flame-train-torch-ops.json "$work"/eager.json "$work"/compile.json
