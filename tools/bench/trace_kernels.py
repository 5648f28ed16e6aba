#!/usr/bin/env python3
"""GPU kernel time by kernel name in profiler traces (Chrome trace JSON, optionally gzipped), side by side.

Reads the traces flame-train's `--profiling.enable_profiling` writes (libtorch's profiler) and the one
`tools/bench/fla_train.py --profile` writes (torch's), sums the duration of every GPU kernel event
(`"cat": "kernel"`) by name, and prints the names with the most time in any trace, one column per trace,
then each trace's total GPU kernel time and its span from first kernel start to last kernel end (their
difference is time the GPU sat idle inside the profiled step). Kernels launched from Rust and from
Triton's Python launcher carry the same cubin entry names, so fla's kernels line up across the traces.

Usage: python3 tools/bench/trace_kernels.py [--top N] [--match SUBSTRING] TRACE [TRACE ...]
"""
import argparse
import collections
import gzip
import json
import os


def kernel_times(path):
    """Returns ({name: (microseconds, count)}, total microseconds, span microseconds) of one trace."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    times = collections.defaultdict(lambda: [0.0, 0])
    first, last = None, None
    for e in events:
        if e.get("cat") != "kernel" or e.get("ph") != "X":
            continue
        start, dur = float(e["ts"]), float(e.get("dur", 0))
        times[e["name"]][0] += dur
        times[e["name"]][1] += 1
        first = start if first is None else min(first, start)
        last = start + dur if last is None else max(last, start + dur)
    total = sum(t for t, _ in times.values())
    return {k: tuple(v) for k, v in times.items()}, total, (last - first) if times else 0.0


def short(name, width):
    return name if len(name) <= width else name[: width - 1] + "…"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("traces", nargs="+")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--match", default="", help="only kernels whose name contains this")
    args = p.parse_args()
    runs = [kernel_times(t) for t in args.traces]
    names = collections.Counter()
    for times, _, _ in runs:
        for name, (us, _) in times.items():
            if args.match in name:
                names[name] = max(names[name], us)
    labels = [short(os.path.basename(os.path.dirname(t)) + "/" + os.path.basename(t), 24) for t in args.traces]
    print(f"{'kernel':<60}" + "".join(f"{label:>26}" for label in labels))
    for name, _ in names.most_common(args.top):
        cells = []
        for times, _, _ in runs:
            us, count = times.get(name, (0.0, 0))
            cells.append(f"{us / 1000:>16.2f} ms ×{count:<5}")
        print(f"{short(name, 60):<60}" + "".join(f"{c:>26}" for c in cells))
    print(f"{'all kernels':<60}" + "".join(f"{total / 1000:>19.2f} ms    " for _, total, _ in runs))
    print(f"{'first kernel start to last kernel end':<60}" + "".join(f"{span / 1000:>19.2f} ms    " for _, _, span in runs))


if __name__ == "__main__":
    main()
