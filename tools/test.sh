#!/usr/bin/env bash
# Runs every test: the workspace's unit, integration (megatron-core and transformers interop included)
# and doc tests, the trainer's on CPU. Sets up what they need first (the cached Python venv of
# tools/setup-python.sh, libtorch of tools/setup-libtorch.sh). The README's test command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/setup-python.sh > /dev/null
bash tools/setup-libtorch.sh > /dev/null
if cargo nextest --version > /dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast --lib --bins --tests
fi
cargo test --doc
