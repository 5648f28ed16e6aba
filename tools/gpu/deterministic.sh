#!/usr/bin/env bash
# `--training.deterministic` on the GPU machine (issue 20), with binaries built on the CPU machine: two
# identical runs of flame-train's transformer_340M at 4 × 2048, 12 steps each, fed by one flame-stream;
# prints whether their logged losses are equal bit for bit.
# Usage: BIN=dir-with-flame-stream,flame-train [DATA=prepared-dataset] bash tools/gpu/deterministic.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../bench/gpu-env.sh"
steps=12
for run in a b; do
    flame_train "deterministic-$run" "$root/configs/transformer_340M.json" 2048 4 2048 false \
        --training.deterministic > /dev/null
done
"$python" - "$work/deterministic-a/metrics.jsonl" "$work/deterministic-b/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(line)["loss"] for line in open(path)] for path in sys.argv[1:])
verdict = "equal bit for bit" if a and a == b else "DIFFERENT"
print(f"deterministic: losses of the two runs {verdict} ({len(a)} logged steps): {a} / {b}")
PY
