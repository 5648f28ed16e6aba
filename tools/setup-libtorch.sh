#!/usr/bin/env bash
# Fetches libtorch 2.11.0 (the +cu130 build that the GPU machines run) from PyPI, once, links it as
# .libtorch in the repository (where .cargo/config.toml sends cargo) and prints the LIBTORCH directory to
# build flame-train against (../shared/notes/libtorch.md has the why of each step).
#
# Cached under ${FLAME_CACHE:-~/.cache/flame}/libtorch-2.11.0 (about 540 MB; only these files of the wheels
# are unpacked, so nothing CUDA-only or Python-only takes disk):
#   torch/include, torch/lib/{libtorch_cpu.so,libc10.so,libgomp.so.1}
#   nvidia/cu13/lib         libcudart.so.13 and libcupti.so.13, which libtorch_cpu.so needs even on CPU
#   torch-cpu/              LIBTORCH: include/, and lib/ with libtorch_cpu.so, libc10.so, libgomp.so.1 and a
#                           stub libtorch.so, so a build here never links CUDA; on a GPU machine the real
#                           libtorch.so (LD_LIBRARY_PATH=.../site-packages/torch/lib) brings CUDA in.
# Only PyPI is contacted; nothing is pip-installed.
set -euo pipefail

cache="${FLAME_CACHE:-$HOME/.cache/flame}"
dest="$cache/libtorch-2.11.0"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# .cargo/config.toml points LIBTORCH at this link, so that a plain `cargo build` builds the trainer.
link() {
    ln -sfn "$dest/torch-cpu" "$repo/.libtorch"
    echo "$dest/torch-cpu"
}
if [[ -f "$dest/.complete" ]]; then
    link
    exit 0
fi
echo "setup-libtorch: fetching torch 2.11.0 from PyPI into $dest (about 550 MB downloaded)" >&2
rm -rf "$dest.partial"
mkdir -p "$dest.partial/wheels"
cd "$dest.partial"
python3 -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps -d wheels --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 torch==2.11.0 >&2
python3 -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps -d wheels --only-binary=:all: \
    'nvidia-cuda-runtime==13.0.96' 'nvidia-cuda-cupti==13.0.85' >&2
python3 - wheels/*.whl <<'EOF'
import sys
import zipfile

keep_dirs = ("torch/include/", "nvidia/cu13/lib/")
keep_files = {f"torch/lib/{lib}" for lib in ("libtorch_cpu.so", "libc10.so", "libgomp.so.1")}
for wheel in sys.argv[1:]:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.startswith(keep_dirs) or n in keep_files]
        archive.extractall(".", names)
EOF
rm -rf wheels
# The CPU view sits beside torch/ so that libtorch_cpu.so's RPATH ($ORIGIN/../../nvidia/cu13/lib, with
# $ORIGIN the symlink's directory) finds cudart and cupti.
mkdir -p torch-cpu/lib
ln -sfn ../torch/include torch-cpu/include
for lib in libtorch_cpu.so libc10.so libgomp.so.1; do
    ln -sfn "../../torch/lib/$lib" "torch-cpu/lib/$lib"
done
echo 'void flame_libtorch_cpu_stub(void) {}' > torch-cpu/stub.c
gcc -shared -fPIC -O2 -Wl,-soname,libtorch.so -o torch-cpu/lib/libtorch.so torch-cpu/stub.c
echo "2.11.0+cu130" > torch-cpu/build-version   # turns torch-sys's version check on
touch .complete
cd "$cache"
rm -rf "$dest"
mv "$dest.partial" "$dest"
link
