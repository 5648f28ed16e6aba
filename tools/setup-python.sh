#!/usr/bin/env bash
# Creates (once) the Python venv that flame's interop tests use, and prints its interpreter's path.
# `tools/setup-python.sh bench` does the same for the benchmarks' venv (tools/bench/requirements.txt:
# adds transformers and datasets, the peers of tools/bench/prep.py; ~600 MB, never used by CI).
#
# megatron-core is installed with --no-deps and its data modules are loaded with small stubs
# (tools/interop/megatron_core_oracle.py): its oracles need neither torch nor a GPU. torch (PyPI's CUDA
# build, run on the CPU) is here for transformers, which loads flame-train's export, and for the Python
# client's torch DataLoader test (streamer/tests/python.rs); 5.1 GB in all.
# Cached under ${FLAME_CACHE:-~/.cache/flame}/venv; rebuilt when the pinned requirements change.
set -euo pipefail

cache="${FLAME_CACHE:-$HOME/.cache/flame}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-test}" in
    test) venv="$cache/venv"; requirements="$here/python-requirements.txt" ;;
    bench) venv="$cache/bench-venv"; requirements="$here/bench/requirements.txt" ;;
    *) echo "usage: $0 [test|bench]" >&2; exit 2 ;;
esac
stamp="$venv/.flame-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

mkdir -p "$cache"
# One creation at a time: test binaries run in parallel and each asks for the venv.
exec 9> "$venv.lock"
flock 9
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "setup-python: creating $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    # No pip cache: it would keep a second copy of the 2.6 GB of wheels.
    install() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "$@" >&2; }
    install --upgrade pip
    # megatron-core without its torch dependency (see above); everything else as pinned.
    grep -v '^megatron-core' "$requirements" | install -r /dev/stdin
    grep '^megatron-core' "$requirements" | install --no-deps -r /dev/stdin
    echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
