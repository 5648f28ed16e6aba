"""flame-stream beside Grain, in one run (tools/bench/stream.sh builds and calls this).

1. `target/release/examples/throughput SECONDS` (streamer/examples/throughput.rs): the compute ceiling
   (micro-batches made in-process on one thread), then aggregate tokens/s, p50/p99 latency and server
   CPU for 1, 8 and 64 clients over shared memory and over TCP loopback, and 64 paced clients.
2. Grain (`grain.MapDataset`), the peer, on the same two int32 token files memory-mapped with numpy:
   each dataset cut into windows of 2048 tokens, shuffled (`shuffle(seed)`), mixed 0.7/0.3 per window
   (`MapDataset.mix`, per token since windows are equal), batched by 4, read for SECONDS in one
   process and with 2 worker processes (`mp_prefetch`). Grain produces no `cu_seqlens` (flame-stream
   does) and serves one consumer; its rate is what a trainer's input pipeline would see.
3. `target/release/examples/startup`: opening a job on 10^8 documents, its first sample, and resuming
   at step 10^6.

Prints a table and the ratios flame-stream / Grain; writes everything to
~/.cache/flame/bench/stream/results.json.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

SEQ_LEN, MICRO_BATCH = 2048, 4


def run_flame(root, seconds):
    out = subprocess.run([str(root / "target/release/examples/throughput"), str(seconds)], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    return pathlib.Path(out[0]), [json.loads(line) for line in out[1:]]


def grain_dataset(data_dir):
    import grain

    parts = []
    for name, seed in (("ds0", 1), ("ds1", 2)):
        tokens = np.memmap(data_dir / f"{name}.bin", dtype=np.int32, mode="r")
        windows = len(tokens) // SEQ_LEN

        def window(i, tokens=tokens):
            return np.asarray(tokens[i * SEQ_LEN:(i + 1) * SEQ_LEN])

        parts.append(grain.MapDataset.range(windows).shuffle(seed=seed).map(window))
    # Repeated, as a training run reads more than one pass of the mixture.
    return grain.MapDataset.mix(parts, weights=[0.7, 0.3]).repeat().batch(MICRO_BATCH)


def run_grain(data_dir, seconds, workers):
    import grain

    dataset = grain_dataset(data_dir).to_iter_dataset()
    if workers:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    iterator = iter(dataset)
    next(iterator)  # start-up (worker processes) outside the measurement
    tokens, latencies, checksum = 0, [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        batch = next(iterator)
        latencies.append(time.perf_counter() - t0)
        checksum ^= int(batch[:, ::512].sum())
        tokens += batch.size
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"peer": f"grain {'mp_prefetch ' + str(workers) + ' workers' if workers else 'one process'}",
            "tokens_per_s": tokens / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int((len(latencies) - 1) * 0.99)] * 1e3, "checksum": checksum}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    root = pathlib.Path(__file__).resolve().parents[2]
    data_dir, flame = run_flame(root, args.seconds)
    peers = [run_grain(data_dir, args.seconds, 0), run_grain(data_dir, args.seconds, 2)]
    startup_out = subprocess.run([str(root / "target/release/examples/startup")], check=True,
                                 capture_output=True, text=True).stdout.splitlines()
    startup = json.loads(startup_out[-1])
    best_peer = max(p["tokens_per_s"] for p in peers)

    print(f"{'case':<44} {'Mtok/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU':>8} {'x Grain':>8}")
    for r in flame:
        paced = f", {r['step_ms']:g} ms steps" if r.get("step_ms") else ""
        name = f"flame-stream {r['transport']}, {r['clients']} clients{paced}"
        print(f"{name:<44} {r['tokens_per_s'] / 1e6:>9.1f} {r.get('p50_ms', float('nan')):>8.3f} "
              f"{r.get('p99_ms', float('nan')):>8.3f} {r.get('server_cpu_per_s', float('nan')):>8.2f} "
              f"{r['tokens_per_s'] / best_peer:>8.2f}")
    for p in peers:
        print(f"{p['peer']:<44} {p['tokens_per_s'] / 1e6:>9.1f} {p['p50_ms']:>8.3f} {p['p99_ms']:>8.3f} "
              f"{'':>8} {p['tokens_per_s'] / best_peer:>8.2f}")
    print(f"start-up on {startup['documents']:.0e} documents: open {startup['open_s']:.2f} s, first sample "
          f"{startup['first_sample_s'] * 1e3:.1f} ms, resume at step 10^6 {startup['resume_at_step_1e6_s'] * 1e3:.1f} ms, "
          f"at step 10^9 {startup['resume_at_step_1e9_s'] * 1e3:.1f} ms")
    results = {"flame_stream": flame, "grain": peers, "startup": startup, "cpus": os.cpu_count(),
               "seconds": args.seconds}
    out = pathlib.Path(os.environ.get("FLAME_CACHE", pathlib.Path.home() / ".cache/flame")) / "bench/stream"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {out / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
