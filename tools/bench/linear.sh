#!/usr/bin/env bash
# The linear-attention models' benchmark on the GPU machine (issue 17), with binaries built on the CPU
# machine and fla's kernels built by tools/setup-kernels.sh ($FLAME_KERNELS): for each of $MODELS
# (default gla_340M delta_net_340M gated_deltanet_340M), at batch 8 × 2048 and varlen 1 × 65536 with
# context_len 4096, flame-train (fla's kernels, --model.kernels fla) and fla 0.6.0 under PyTorch
# (tools/bench/fla_train.py: eager, and with per-block torch.compile unless NO_COMPILE=1), then
# flame-train's transformer_340M at 8 × 2048. Prints tokens/s, memory and data waiting, flame-train over
# the faster of fla's runs, and each model's tokens/s over the transformer's. fla refuses Gated DeltaNet's
# backward on Hopper with the GPU machine's Triton 3.6 (fla#640): that model has no fla row of record.
# fla's runs come after all of flame-train's, 8 × 2048 before varlen; DEADLINE=S stops starting them S
# seconds into the script and bounds each to what is left. FLA_GDN_TIMING=1 adds fla's Gated DeltaNet with
# its refusal bypassed (fla_train.py --ignore-fla640): a timing beside flame-train's, not a correct run.
# fla's runs share one Triton cache ($TRITON_CACHE_DIR, else a fresh one), so each shape is autotuned once.
# FLA_TIMEOUT (default 420 s) bounds one fla run (compiled GLA warms up for minutes). SHAPES="8x2048" (or
# "varlen") runs one shape only; DeltaNet's and Gated DeltaNet's varlen rows checkpoint activations (their
# 65536 tokens exhaust an H100 without it). The varlen shape needs $DATA with at least 65,536 tokens. FLA_TUNED=FILE
# appends fla's autotuner choices to FILE (fla_train.py --tuned: the table tools/setup-kernels.sh builds with);
# FLA_PRESET=FILE starts fla's autotuners from such a table (fla_train.py --preset) instead of a cold search.
# Usage: BIN=dir WHEELS=dir-with-fla-wheels FLAME_KERNELS=dir bash tools/bench/linear.sh [STEPS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu-env.sh"
steps="${1:-30}"
"$python" -m pip install --quiet --no-index --no-deps --target "$work/py" "${WHEELS:?}"/*.whl
export PYTHONPATH="$work/py${PYTHONPATH:+:$PYTHONPATH}" TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$work/triton}"
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

# fla_train NAME CONFIG SHAPE [FLAG...]: one fla run; $work/NAME.json gets its result line.
fla_train() {
    local name=$1 config=$2 shape=$3
    shift 3
    local budget=${FLA_TIMEOUT:-420}
    if [[ -n "${DEADLINE:-}" ]]; then
        local left=$(( DEADLINE - SECONDS ))
        (( left < budget )) && budget=$left
        (( budget > 30 )) || { echo "$name: not run (DEADLINE reached)"; return 0; }
    fi
    timeout "$budget" "$python" "$root/tools/bench/fla_train.py" "$config" --shape "$shape" \
        --steps 10 --warmup 3 ${FLA_TUNED:+--tuned "$FLA_TUNED"} \
        ${FLA_PRESET:+--preset "$FLA_PRESET"} "$@" 2> "$work/$name.err" | sed -n 's/^RESULT //p' > "$work/$name.json" \
        || { echo "$name: did not finish ($(tail -1 "$work/$name.err"))"; rm -f "$work/$name.json"; }
    if [[ -s "$work/$name.json" ]]; then echo "RESULT $name $(cat "$work/$name.json")"; fi
}

echo "== on $gpu"
models=(${MODELS:-gla_340M delta_net_340M gated_deltanet_340M})
shapes=(${SHAPES:-8x2048 varlen})
results=()
for model in "${models[@]}"; do
    config="$root/configs/$model.json"
    for shape in "${shapes[@]}"; do
        if [[ $shape == 8x2048 ]]; then
            flame_train "$model-8x2048" "$config" 2048 8 2048 false --model.kernels fla
        elif [[ $model == gla* ]]; then
            flame_train "$model-varlen" "$config" 65536 1 4096 true --model.kernels fla
        else
            # DeltaNet's and Gated DeltaNet's 65536 tokens exhaust an H100's 80 GB without it (as fla's do).
            flame_train "$model-varlen" "$config" 65536 1 4096 true --model.kernels fla \
                --activation_checkpoint.mode full
        fi
        results+=("$work/$model-$shape.json")
        echo "RESULT $model-$shape $(cat "$work/$model-$shape.json" 2>/dev/null)"
    done
done
flame_train transformer_340M-8x2048 "$root/configs/transformer_340M.json" 2048 8 2048 false
# fla's runs after all of flame-train's, shape by shape (8 × 2048 first: its autotuning is the shorter).
for shape in "${shapes[@]}"; do
    for model in "${models[@]}"; do
        config="$root/configs/$model.json"
        if [[ $model == gated_deltanet* ]]; then
            [[ -n "${FLA_GDN_TIMING:-}" ]] && fla_train "fla640-$model-$shape" "$config" "$shape" --ignore-fla640
            continue
        fi
        fla_train "fla-$model-$shape" "$config" "$shape"
        [[ -n "${NO_COMPILE:-}" ]] || fla_train "fla-compile-$model-$shape" "$config" "$shape" --compile
        results+=("$work/fla-$model-$shape.json" "$work/fla-compile-$model-$shape.json")
    done
done
for model in "${models[@]}"; do
    for shape in "${shapes[@]}"; do results+=("$work/fla640-$model-$shape.json"); done
done

"$python" - "$work/transformer_340M-8x2048.json" "${results[@]}" <<'PY'
import json, os, sys

def load(path):
    return json.load(open(path)) if os.path.exists(path) and open(path).read().strip() else None

transformer = load(sys.argv[1])
rows = {}
for path in sys.argv[2:]:
    name = os.path.basename(path).removesuffix(".json")
    rows[name] = load(path)
for name, r in rows.items():
    if r is None:
        print(f"{name:<36} no result")
        continue
    memory = r.get("memory_gib", r.get("peak_gib"))
    line = f"{name:<36} {r['tokens_per_s']:>9.0f} tok/s  {memory or 0:5.1f} GiB"
    if "peak_reserved_gib" in r:  # fla: torch's peak allocation, then its peak reservation
        line += f" (reserved {r['peak_reserved_gib']:.1f})"
    if "data_loading_pct" in r:
        line += f"  data waiting {r['data_loading_pct']:.2f}% of step time"
        peers = [rows.get(f"fla-{name}"), rows.get(f"fla-compile-{name}")]
        peers = [p["tokens_per_s"] for p in peers if p]
        if peers:
            line += f"  flame-train / fla's faster = {r['tokens_per_s'] / max(peers):.2f}"
        bypassed = rows.get(f"fla640-{name}")
        if bypassed:
            line += f"  flame-train / fla (fla#640 bypassed) = {r['tokens_per_s'] / bypassed['tokens_per_s']:.2f}"
        if name.endswith("8x2048") and transformer:
            line += f"  / transformer_340M = {r['tokens_per_s'] / transformer['tokens_per_s']:.2f}"
    print(line)
if transformer:
    print(f"{'transformer_340M-8x2048 (flame-train)':<36} {transformer['tokens_per_s']:>9.0f} tok/s  "
          f"{transformer['memory_gib']:5.1f} GiB")
PY
