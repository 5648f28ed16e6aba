# Sourced by the GPU benchmarks (train.sh, multi-gpu.sh, scaling.sh), which run binaries built on the CPU
# machine: sets root, bin ($BIN, default target/release), data ($DATA, default the bundled fixture),
# python ($PYTHON, default the GPU machine's torch venv) and torchlib; puts torch's libraries on the
# library path; makes a work directory removed on exit; starts one flame-stream serving
# unix://$work/s.sock (its pid in $server) and waits until it listens.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${BIN:-$root/target/release}"
data="$(cd "${DATA:-$root/tests/data/golden-mistral}" && pwd)"
python="${PYTHON:-/opt/torch/.venv/bin/python}"
torchlib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work="$(mktemp -d)"
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
coproc SERVER { exec "$bin/flame-stream" serve --listen "unix://$work/s.sock"; }
server=$SERVER_PID
read -r _ <&"${SERVER[0]}"
