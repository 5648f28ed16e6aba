#!/usr/bin/env bash
# flame-train's benchmark on the GPU machine, with binaries built on the CPU machine (nothing is built
# there): flame-stream serves $DATA (a flame-prep output or Megatron prefix; default the bundled
# fixture), flame-train trains configs/transformer_340M.json at batch 8 × 2048 in bf16 autocast, then
# varlen at 1 × 65536 with context_len 4096 (flash attention over the documents, full activation
# checkpointing: $VARLEN_AC, default full; every activation of 65536 tokens does not fit in 80 GB), and
# tools/bench/torch_reference.py trains the same model in PyTorch, eager and compiled, at 8 × 2048.
# flame-train-fused is flame-train at 8 × 2048 with --model.kernels fla (fla's fused loss and flame's fused
# residual norms, from the kernel build in $FLAME_KERNELS or tools/setup-kernels.sh's); its losses are
# compared with flame-train's (tools/bench/compare_losses.py).
# Prints tokens/s, TFLOP/s, MFU, device memory, the share of step time spent waiting for data, and the
# ratios.
# Usage: BIN=dir-with-flame-stream,flame-train [DATA=dir] [VARLEN_SEQ=65536] bash tools/bench/train.sh [STEPS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu-env.sh"
steps="${1:-40}"
config="$root/configs/transformer_340M.json"

flame_train flame-train "$config" 2048 8 2048 false
flame_train flame-train-fused "$config" 2048 8 2048 false --model.kernels fla
"$python" "$root/tools/bench/compare_losses.py" "$work"/flame-train/metrics.jsonl \
    "$work"/flame-train-fused/metrics.jsonl || true
varlen_seq="${VARLEN_SEQ:-65536}"
flame_train "flame-varlen-$varlen_seq" "$config" "$varlen_seq" 1 4096 true --activation_checkpoint.mode "${VARLEN_AC:-full}"
"$python" "$root/tools/bench/torch_reference.py" "$config" --steps "$steps" > "$work/eager.json"
"$python" "$root/tools/bench/torch_reference.py" "$config" --steps "$steps" --compile > "$work/compile.json" 2> "$work/compile.err" || tail -5 "$work/compile.err"
summarize "$work"/flame-train.json "$work"/flame-train-fused.json "$work"/eager.json "$work"/compile.json "$work/flame-varlen-$varlen_seq.json"
