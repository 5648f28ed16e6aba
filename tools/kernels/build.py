"""Compile fla-core's Triton kernels for flame-train's models into sm_90a cubins, on a machine without a GPU
or torch, and write OUT_DIR/manifest.json (the launcher's contract, README.md).

  build.py OUT_DIR [--tuned FILE] [--configs DIR] [--jobs N]

For every config in configs/ whose model_type is gla, delta_net or gated_deltanet, fla's own chunk op
(chunk_gla, chunk_delta_rule, chunk_gated_delta_rule, called as fla's layers call them) runs forward and
backward on shape-only tensors in the variable-length form (B = 1, cu_seqlens of uneven documents), and for
every config (transformer and gpt2 too) fla's fused cross-entropy over its vocabulary; every distinct kernel
variant it launches is compiled once, with the tuned config from FILE when it has one that
fla accepts and that fits an H100, else the first of fla's configs that fits. Run it with the kernel venv's
Python (tools/setup-kernels.sh does)."""
import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FLA_VERSION, TRITON_VERSION, TARGET = "0.6.0", "3.7.1", "sm_90a"
# One packed batch of 65536 tokens (1 x 65536, cu_seqlens given), documents of uneven lengths. The
# lengths select no kernel variant; the total only selects l2norm's NB = cdiv(65536 * H, 65536) = H.
DOCUMENTS = [1, 63, 64, 65, 127, 1000, 2048, 4096, 8191, 16384, 33497]


def isolate_environment(scratch):
    """The build depends on nothing in the caller's environment: no FLA_* switch (FLA_USE_FAST_OPS,
    FLA_TRIL_PRECISION, FLA_USE_TMA, FLA_CACHE_MODE... change the code or configs) and no TRITON_* one;
    Triton's caches stay in the build's scratch directory; FP fusion on (3.7.1's default, stated)."""
    for name in list(os.environ):
        if name.startswith(("FLA_", "TRITON_")):
            del os.environ[name]
    os.environ["TRITON_HOME"] = scratch
    os.environ["TRITON_CACHE_DIR"] = os.path.join(scratch, "cache")
    os.environ["TRITON_DEFAULT_FP_FUSION"] = "1"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--tuned", help="tuned-config table (JSON lines, tuned.py)")
    parser.add_argument("--configs", default=os.path.join(REPO, "configs"), help="model configs (default: configs/)")
    parser.add_argument("--jobs", type=int, default=2, help="compiling processes (default 2)")
    return parser.parse_args()


# --- filled in main() before the pool forks; the workers read them
VARIANTS = []  # [Variant]
CANDIDATES = []  # per variant: [(triton.Config, source)]


def candidates(variant, table):
    """The configs to try, in order, each with its manifest config_source; and a note when a tuned entry
    was found but refused."""
    if not variant.autotuned:
        return [(variant.configs[0], "fixed")], None
    first = [(c, "first") for c in variant.configs]
    entry = tuned.lookup(table, variant.qualname, variant.key) if table else None
    if entry is None:
        return first, None
    config = tuned.config(entry)
    if config not in variant.prune([*variant.tuner.configs, config]):
        return first, f"tuned config {entry['config']} refused by fla's early_config_prune"
    return [(config, "tuned")] + first, None


def compile_job(index):
    """Compiles variant index with the first candidate that compiles and fits, and its aligned twin (the
    runtime ints that are multiples of 16 compiled as such, aot.signature) with that config if the twin
    fits too; returns a plain dict."""
    variant = VARIANTS[index]
    notes = []
    for config, source in CANDIDATES[index]:
        sig = aot.signature(variant.jit, variant.values(config))
        described = dict(kwargs=dict(config.kwargs), num_warps=config.num_warps, num_stages=config.num_stages)
        try:
            compiled = aot.compile_variant(variant.jit, sig, config)
        except Exception as e:  # a candidate that does not compile: try the next (and say so)
            notes.append(f"{source} {described}: {type(e).__name__}: {str(e)[:200]}")
            continue
        if compiled.shared > hopper.MAX_SHARED:
            notes.append(f"{source} {described}: shared {compiled.shared} B > {hopper.MAX_SHARED}")
            continue
        twin = None
        twin_sig = aot.signature(variant.jit, variant.values(config), aligned=True)
        if twin_sig.divisible:
            twin = aot.compile_variant(variant.jit, twin_sig, config)
            if twin.shared > hopper.MAX_SHARED:
                notes.append(f"aligned twin: shared {twin.shared} B > {hopper.MAX_SHARED}")
                twin = None
        return dict(index=index, sig=sig, config=described, source=source, compiled=compiled, notes=notes,
                    twin=twin and dict(sig=twin_sig, compiled=twin))
    return dict(index=index, compiled=None, notes=notes)


def manifest_entry(variant, result):
    compiled, config = result["compiled"], result["config"]
    for name, value in result["sig"].constexprs.items():
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise TypeError(f"{variant.qualname}: constexpr {name} = {value!r} has no JSON form")
    return {"kernel": variant.qualname, "entry": compiled.entry, "cubin": None,
            "constexprs": result["sig"].constexprs, "args": result["sig"].args,
            "divisible": result["sig"].divisible,
            "num_warps": config["num_warps"], "num_stages": config["num_stages"], "shared": compiled.shared,
            "global_scratch": compiled.global_scratch, "profile_scratch": compiled.profile_scratch,
            "config_source": result["source"]}


def identity(entry):
    return (entry["kernel"], json.dumps(entry["constexprs"], sort_keys=True), json.dumps(entry["args"]),
            json.dumps(entry["divisible"]))


def _order(value):
    """Sorts JSON scalars of mixed types: null, then booleans, numbers (numerically), strings."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, bool):
        return (1, int(value), "")
    if isinstance(value, (int, float)):
        return (2, value, "")
    return (3, 0, str(value))


def sort_key(entry):
    """Manifest order: by kernel, then constexpr values (numerically), then argument types."""
    return (entry["kernel"], tuple((name, _order(v)) for name, v in sorted(entry["constexprs"].items())),
            json.dumps(entry["args"]), json.dumps(entry["divisible"]))


def main():
    args = parse_args()
    start = time.time()
    out = os.path.abspath(args.out_dir)
    scratch = os.path.join(out, ".build-scratch")
    os.makedirs(scratch, exist_ok=True)
    isolate_environment(scratch)

    # Imported only now, in the isolated environment; module globals, for the forked workers.
    global aot, hopper, tuned
    import aot
    import hopper
    import models
    import tracer
    import triton
    import tuned
    import variants
    if hopper.fla_version() != FLA_VERSION or triton.__version__ != TRITON_VERSION:
        sys.exit(f"build.py: needs fla-core {FLA_VERSION} and Triton {TRITON_VERSION}, "
                 f"found {hopper.fla_version()} and {triton.__version__}")

    # Trace: every model's forward and backward.
    found, per_model = {}, {}
    for model in models.load(args.configs):
        launches = tracer.OPS[model.op](DOCUMENTS, **model.shape) if model.op else []
        for op, shape in model.extras:
            launches += tracer.OPS[op](DOCUMENTS, **shape)
        per_model[model.name] = set(variants.merge(found, launches, model.name))
        print(f"{model.name}: {model.op} {model.shape}: {len(launches)} launches, "
              f"{len(per_model[model.name])} variants", flush=True)
    if not found:
        sys.exit(f"build.py: no model config in {args.configs}")
    table = tuned.load(args.tuned) if args.tuned else []
    idents = list(found)
    for ident in idents:
        VARIANTS.append(found[ident])
        options, note = candidates(found[ident], table)
        CANDIDATES.append(options)
        if note:
            print(f"note: {found[ident].qualname}: {note}", flush=True)

    # Compile.
    print(f"compiling {len(VARIANTS)} variants with {args.jobs} processes", flush=True)
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        results = pool.map(compile_job, range(len(VARIANTS)), chunksize=1)

    # Check, deduplicate, name, write.
    failed = [r for r in results if r["compiled"] is None]
    for r in results:
        for note in r["notes"]:
            print(f"note: {VARIANTS[r['index']].qualname}: {note}", flush=True)
    if failed:
        sys.exit(f"build.py: {len(failed)} variants have no config that compiles and fits: "
                 + ", ".join(VARIANTS[r["index"]].qualname for r in failed))
    entries, by_ident = {}, {}
    for r in results:
        twin = r["twin"] and {**r, **r["twin"]}
        for result in (r, twin) if twin else (r,):
            entry = manifest_entry(VARIANTS[r["index"]], result)
            if entry["global_scratch"] or entry["profile_scratch"]:
                sys.exit(f"build.py: {entry['kernel']} needs scratch memory "
                         f"(global {entry['global_scratch']}, profile {entry['profile_scratch']} B)")
            known = entries.setdefault(identity(entry), (entry, result["compiled"].cubin))[0]
            if known is not entry and (known["num_warps"], known["num_stages"]) != (entry["num_warps"], entry["num_stages"]):
                sys.exit(f"build.py: {entry['kernel']}: one manifest identity, two configs")
        by_ident[idents[r["index"]]] = identity(manifest_entry(VARIANTS[r["index"]], r))
    kernels = []
    for number, key in enumerate(sorted(entries, key=lambda k: sort_key(entries[k][0]))):
        entry, cubin = entries[key]
        entry["cubin"] = f"{number:04d}.cubin"
        with open(os.path.join(out, entry["cubin"]), "wb") as f:
            f.write(cubin)
        kernels.append(entry)
    manifest = {"format": 1, "fla": FLA_VERSION, "triton": TRITON_VERSION, "target": TARGET, "kernels": kernels}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    cubin_of = {key: entries[key][0]["cubin"] for key in entries}
    info = {"documents": DOCUMENTS, "tuned": os.path.abspath(args.tuned) if args.tuned else None,
            "seconds": round(time.time() - start, 1),
            "models": {name: sorted(cubin_of[by_ident[i]] for i in seen) for name, seen in per_model.items()},
            "notes": [f"{VARIANTS[r['index']].qualname}: {note}" for r in results for note in r["notes"]]}
    with open(os.path.join(out, "build.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    shutil.rmtree(scratch)

    size = sum(os.path.getsize(os.path.join(out, k["cubin"])) for k in kernels)
    sources = {s: sum(k["config_source"] == s for k in kernels) for s in ("tuned", "first", "fixed")}
    print(f"{len(kernels)} cubins, {size / 1e6:.1f} MB, configs {sources}, {info['seconds']} s -> {out}")


if __name__ == "__main__":
    main()
