#!/usr/bin/env bash
# Builds (once) fla-core 0.6.0's Triton kernels for the linear-attention models of configs/ (GLA, DeltaNet,
# Gated DeltaNet) as sm_90a cubins plus the manifest.json that flame-train's launcher reads, and prints
# the output directory: `tools/setup-kernels.sh [OUT_DIR]`, by default
# ${FLAME_CACHE:-~/.cache/flame}/kernels/fla-0.6.0-triton-3.7.1-sm90a. No GPU and no torch needed
# (tools/kernels/README.md).
#
# The venv ($cache/kernel-venv: Triton, einops, packaging, fla-core --no-deps; 0.7 GB) is rebuilt when
# tools/kernels/requirements.txt changes. The kernels are rebuilt when any input changes: the
# requirements, this script, tools/kernels' Python sources, configs/*.json and the tuned-config table
# (tools/kernels/tuned.jsonl if it exists, or the file FLAME_KERNELS_TUNED names). The build goes to a
# temporary directory that is renamed into place at the end, so a half-built directory never looks valid.
set -euo pipefail

cache="${FLAME_CACHE:-$HOME/.cache/flame}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
kernels="$here/kernels"
requirements="$kernels/requirements.txt"
venv="$cache/kernel-venv"
out="${1:-$cache/kernels/fla-0.6.0-triton-3.7.1-sm90a}"
tuned="${FLAME_KERNELS_TUNED:-}"
if [[ -z "$tuned" && -f "$kernels/tuned.jsonl" ]]; then tuned="$kernels/tuned.jsonl"; fi
if [[ -n "$tuned" ]]; then
    [[ -f "$tuned" ]] || { echo "setup-kernels: no tuned table $tuned" >&2; exit 2; }
    tuned="$(realpath "$tuned")"
fi
mkdir -p "$cache" "$(dirname "$out")"
out="$(realpath -m "$out")"

# --- the venv (one creation at a time)
venv_stamp="$venv/.flame-requirements.sha256"
venv_want="$(sha256sum "$requirements" | cut -d' ' -f1)"
exec 9> "$venv.lock"
flock 9
if [[ ! -x "$venv/bin/python" || ! -f "$venv_stamp" || "$(cat "$venv_stamp")" != "$venv_want" ]]; then
    echo "setup-kernels: creating $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    install() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "$@" >&2; }
    install --upgrade pip
    # fla-core without its torch dependency; everything else as pinned.
    grep -v '^fla-core' "$requirements" | install -r /dev/stdin
    grep '^fla-core' "$requirements" | install --no-deps -r /dev/stdin
    # ptxas writes each source file's mtime into the cubins' line info: one fixed time (1980-01-01, the
    # zip epoch) makes a rebuild in a new venv byte-identical to the last build.
    find "$venv/lib" -name '*.py' -exec touch -m -d @315532800 {} +
    "$venv/bin/python" -m compileall -q "$venv/lib" > /dev/null
    echo "$venv_want" > "$venv_stamp"
fi
flock -u 9

# --- the kernels (one build of a given output directory at a time)
inputs_hash() {
    (
        cd "$root"
        sha256sum tools/setup-kernels.sh tools/kernels/requirements.txt tools/kernels/*.py \
            $(find tools/kernels/stub_torch -name '*.py' | sort) configs/*.json
        if [[ -n "$tuned" ]]; then echo "tuned $(sha256sum < "$tuned")"; fi
    ) | sha256sum | cut -d' ' -f1
}
stamp_name=".flame-inputs.sha256"
want="$(inputs_hash)"
exec 8> "$out.lock"
flock 8
if [[ ! -f "$out/$stamp_name" || "$(cat "$out/$stamp_name")" != "$want" ]]; then
    echo "setup-kernels: building $out" >&2
    tmp="$(mktemp -d "$out.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    args=("$tmp")
    if [[ -n "$tuned" ]]; then args+=(--tuned "$tuned"); fi
    "$venv/bin/python" "$kernels/build.py" "${args[@]}" >&2
    "$venv/bin/python" "$kernels/check_manifest.py" --quiet "$tmp" >&2
    echo "$want" > "$tmp/$stamp_name"
    if [[ -e "$out" ]]; then
        old="$(mktemp -d "$out.old.XXXXXX")"
        mv "$out" "$old/"
        mv "$tmp" "$out"
        rm -rf "$old"
    else
        mv "$tmp" "$out"
    fi
    trap - EXIT
fi
echo "$out"
