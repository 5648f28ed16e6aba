#!/usr/bin/env bash
# Runs every test of the default workspace: unit, integration (megatron-core interop included) and doc tests.
# Sets up what they need first (the cached Python venv of tools/setup-python.sh). The README's test command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/setup-python.sh > /dev/null
if cargo nextest --version > /dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast --lib --bins --tests
fi
cargo test --doc
