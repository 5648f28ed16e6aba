"""fla's own kernel launches for one of its chunk ops, forward then backward, as JSON on stdout: what
flame-train's ports of the ops (trainer/src/kernels/fla/) must launch, launch for launch (the CPU test
`fla_launches` in trainer/tests/fla_launches.rs holds them to it). Run it with the kernel venv's Python:

  trace_ops.py BUILD_DIR OP LENS NAME=VALUE...
  trace_ops.py ~/.cache/flame/kernels/fla-0.6.0-triton-3.7.1-sm90a gla 1,64,100 H=4 K=128 V=256

OP is a tracer.OPS name (gla, delta_net, gated_deltanet, gated_norm), LENS the documents' lengths (one
packed row, cu_seqlens as fla's layers make it), NAME=VALUE the trace function's arguments (integers,
floats, true/false, or text). tracer.py runs fla's wrappers on shape-only tensors; each launch is matched to the variant
BUILD_DIR's manifest.json compiled for it, whose config (block sizes, warps) fixes the grid. Printed:

  [{"kernel": "ops.gla.chunk.chunk_gla_fwd_kernel_o", "phase": "forward", "grid": [x, y, z],
    "constexprs": {...}, "args": [[name, type, value], ...]}, ...]

* kernel: fla's module path without 'fla.', then the function (the manifest's `kernel`);
* grid: fla's grid (its formula with that config's values), padded with 1s to three dimensions;
* constexprs, args: the launch's compile signature with that config (aot.signature), as the manifest
  writes them; an arg's value is a scalar's (a float rounded to fp32, as the kernel gets it) or, for a
  pointer, [elements, buffer]: the tensor's element count and its buffer's number, buffers numbered by
  address in order of first use (a view shares its tensor's buffer; the chunk indices and offsets that
  fla's wrappers make afresh from cu_seqlens at each call count as one buffer each).

l2norm's NB (cdiv(T·H, 65536), an autotune bucket its kernel body never reads) is fla's for these lengths;
the build holds the NB of 65536 tokens, and an l2norm launch matches its variant whatever the NB.

This file lives below tools/kernels/ rather than in it because tools/kernels/*.py are the kernel build's
inputs (setup-kernels.sh hashes them): it changes no cubin, so editing it must not rebuild them."""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tracer  # noqa: E402  (first: installs the fakes)
import aot  # noqa: E402
import triton  # noqa: E402
import variants  # noqa: E402
from triton.runtime.jit import KernelInterface  # noqa: E402

# Constexprs that only bucket the autotune key (tools/kernels/README.md): a launch matches its build's
# variant whatever their value.
BUCKETS = ("NB",)

_record = KernelInterface.__getitem__  # tracer's: records the launch, drops the grid


def _record_with_grid(kernel, grid):
    launch = _record(kernel, grid)

    def run(*args, **kwargs):
        launch(*args, **kwargs)
        tracer.LAUNCHES[-1].grid = grid

    return run


KernelInterface.__getitem__ = _record_with_grid


def _canonical(constexprs, buckets=()):
    """constexprs as JSON text (true is not 1 here), leaving out buckets."""
    return json.dumps({k: v for k, v in constexprs.items() if k not in buckets}, sort_keys=True)


def _config(variant, entry):
    """The config the build compiled entry with, as a triton.Config for variant."""
    if variant.tuner is None:
        return variant.configs[0]
    tuned = set().union(*(c.kwargs for c in variant.tuner.configs))
    kwargs = {name: entry["constexprs"][name] for name in tuned if name in entry["constexprs"]}
    return triton.Config(kwargs, num_warps=entry["num_warps"], num_stages=entry["num_stages"])


def build_variant(variant, manifest):
    """(values, signature) of variant with the config that the build compiled its variant with: the
    manifest entry of the same kernel, constexprs (but BUCKETS) and parameter types."""
    found = []
    for entry in manifest:
        if entry["kernel"] != variant.qualname:
            continue
        values = variant.values(_config(variant, entry))
        sig = aot.signature(variant.jit, values)
        if sig.args == entry["args"] and (_canonical(sig.constexprs, BUCKETS)
                                          == _canonical(entry["constexprs"], BUCKETS)):
            found.append((values, sig))
    if not found:
        raise SystemExit(f"trace_ops.py: the build has no variant of {variant.qualname} for this launch")
    # Several only where BUCKETS differ; their configs must agree, or the grid would be a guess.
    if len({_canonical(sig.constexprs) for _, sig in found}) > 1:
        raise SystemExit(f"trace_ops.py: {len(found)} variants of {variant.qualname} with different configs")
    return found[0]


def _buffer(t):
    """What identifies t's buffer: its address; for the index tensors fla makes from cu_seqlens on the
    host at every call (tracer's prepare_chunk_indices and prepare_chunk_offsets), their name and shape,
    as equal ones hold equal indices (flame makes them once per batch)."""
    return (t.name, t.shape) if t.name in ("chunk_indices", "chunk_offsets") else t.data_ptr()


def _fp32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def describe(launch, manifest, buffers):
    """One launch as printed (see the module's doc); buffers maps addresses to their numbers."""
    variant = variants.resolve(launch)
    values, sig = build_variant(variant, manifest)
    grid = launch.grid(values) if callable(launch.grid) else launch.grid
    grid = [int(g) for g in grid] + [1] * (3 - len(grid))
    args = []
    for name, ty in sig.args:
        value = values[name]
        if isinstance(value, tracer.FakeTensor):
            value = [value.numel(), buffers.setdefault(_buffer(value), len(buffers))]
        elif isinstance(value, float):
            value = _fp32(value)
        args.append([name, ty, value])
    return {"kernel": variant.qualname, "phase": launch.phase, "grid": grid,
            "constexprs": sig.constexprs, "args": args}


def _value(text):
    """A shape argument: true or false, an integer, a float, else the text (an activation's name)."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    build, op, lens, *shape = argv
    with open(os.path.join(build, "manifest.json")) as f:
        manifest = json.load(f)["kernels"]
    shape = {name: _value(value) for name, value in (item.split("=", 1) for item in shape)}
    launches = tracer.OPS[op]([int(n) for n in lens.split(",")], **shape)
    buffers = {}
    described = [json.dumps(describe(launch, manifest, buffers)) for launch in launches]
    print("[\n" + ",\n".join(described) + "\n]")


if __name__ == "__main__":
    main(sys.argv[1:])
