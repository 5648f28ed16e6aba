#!/usr/bin/env bash
# Runs every test: the default workspace's unit, integration (megatron-core interop included) and doc
# tests, then the trainer's on CPU. Sets up what they need first (the cached Python venv of
# tools/setup-python.sh, libtorch of tools/setup-libtorch.sh). The README's test command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/setup-python.sh > /dev/null
LIBTORCH="${LIBTORCH:-$(bash tools/setup-libtorch.sh)}"
export LIBTORCH
if cargo nextest --version > /dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast --lib --bins --tests
fi
cargo test --doc
cargo test -p flame-trainer --no-fail-fast
