"""fla 0.6.0 under PyTorch, trained as flame (fla-org) trains it: the peer of flame-train's linear models
in tools/bench/linear.sh. One model config, one shape, bf16 autocast, fused AdamW, gradient clipping,
random tokens (the step does not depend on the data).

    fla_train.py CONFIG --shape 8x2048|varlen [--compile] [--steps N] [--warmup N] [--tuned FILE]
                 [--preset FILE] [--profile FILE]

`8x2048` is batch 8 of 2048 tokens; `varlen` one row of 65536 tokens cut into documents of at most 4096
(flame's `--training.varlen --training.context_len 4096`; the lengths are seeded, the same every run)
passed as `cu_seqlens`. `--compile` wraps each block in `torch.compile`, as flame applies it. Prints one
line `RESULT {json}` with tokens/s over the timed steps and the peak memory. `--tuned FILE` appends the
choices fla's Triton autotuner made (one JSON line per kernel and key) for tools/kernels/build.py.
`--preset FILE` reads such a table (from an earlier run on the same GPU model) into fla's autotuners
before the first step, so the keys it holds are compiled with the recorded config instead of benchmarking
every candidate again (minutes per model on a cold Triton cache); keys it lacks are autotuned as usual.
`--profile FILE` records one step after the timed ones with torch.profiler and writes its Chrome trace.
With `--tuned`, a run stopped by SIGTERM (`timeout`) still appends the choices made so far, so a cold
autotune that outlasts its time budget is not lost.
`--ignore-fla640` lets fla run Gated DeltaNet's backward on Hopper with Triton < 3.7.1, which fla refuses
because it computes wrong gradients there (fla#640): for autotuning and timing only, never for results.
"""

import argparse
import json
import random
import signal
import sys
import time
import warnings

import torch

warnings.simplefilter("ignore")
import fla  # noqa: E402,F401  (registers fla's models with the Auto classes)
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

VARLEN_TOKENS, CONTEXT_LEN = 65536, 4096


def document_lengths(total, longest, seed=0):
    """Seeded document lengths in [longest/16, longest] that sum to `total`."""
    rng, lengths = random.Random(seed), []
    while sum(lengths) < total:
        lengths.append(min(rng.randint(longest // 16, longest), total - sum(lengths)))
    return lengths


def batch(shape, vocab, device):
    if shape == "8x2048":
        return torch.randint(0, vocab, (8, 2048), device=device), None
    lengths = document_lengths(VARLEN_TOKENS, CONTEXT_LEN)
    cu = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    return torch.randint(0, vocab, (1, VARLEN_TOKENS), device=device), cu


def build(path, compile_blocks, device):
    fields = json.load(open(path))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = AutoModelForCausalLM.from_config(config).to(device)
    if compile_blocks:
        for i, block in enumerate(model.model.layers):
            model.model.layers[i] = torch.compile(block)
    return model, config


def autotuned_kernels():
    """fla's autotuners, each once: (qualified kernel name, Autotuner)."""
    from triton.runtime.autotuner import Autotuner

    seen = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("fla.") or module is None:
            continue
        for kernel in vars(module).values():
            while kernel is not None and not isinstance(kernel, Autotuner):
                kernel = getattr(kernel, "fn", None)
            if kernel is None or id(kernel) in seen:
                continue
            seen.add(id(kernel))
            jit = kernel.fn
            while hasattr(jit, "fn"):
                jit = jit.fn
            yield f"{jit.__module__}.{jit.__name__}", kernel


def autotuned():
    """Every choice fla's autotuners made: (kernel, key names, key, config)."""
    for qualified, kernel in autotuned_kernels():
        for key, config in kernel.cache.items():
            yield {
                "kernel": qualified,
                "keys": list(kernel.keys),
                "key": [str(k) for k in key],
                "config": {"kwargs": dict(config.kwargs), "num_warps": config.num_warps,
                           "num_stages": config.num_stages},
            }


def write_tuned(path):
    with open(path, "a") as f:
        for line in autotuned():
            f.write(json.dumps(line) + "\n")


def write_tuned_on_sigterm(path):
    """On SIGTERM, appends the autotuners' choices so far to `path` and exits with status 124."""
    def handler(signum, frame):
        write_tuned(path)
        print(f"stopped by signal {signum}: tuned choices so far appended to {path}", file=sys.stderr)
        sys.exit(124)

    signal.signal(signal.SIGTERM, handler)


def key_value(text):
    """A key element of a --tuned line as the autotuner built it: int, bool, None, or the dtype string."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    try:
        return int(text)
    except ValueError:
        return text


def preset(path):
    """Loads a --tuned table into the cache of each autotuner it names; returns how many keys it set."""
    from triton import Config

    by_name = {}
    for line in autotuned_kernels():
        by_name.setdefault(line[0], []).append(line[1])
    count = 0
    for line in map(json.loads, open(path)):
        for kernel in by_name.get(line["kernel"], []):
            config = line["config"]
            key = tuple(key_value(k) for k in line["key"])
            kernel.cache[key] = Config(dict(config["kwargs"]), num_warps=config["num_warps"],
                                       num_stages=config["num_stages"])
            count += 1
    return count


def main():
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--shape", choices=["8x2048", "varlen"], required=True)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tuned")
    p.add_argument("--preset")
    p.add_argument("--profile")
    p.add_argument("--ignore-fla640", action="store_true")
    args = p.parse_args()
    if args.ignore_fla640:
        import fla.ops.common.chunk_o as chunk_o

        chunk_o.TRITON_ABOVE_3_7_1 = True
    device = "cuda"
    torch.manual_seed(0)
    model, config = build(args.config, args.compile, device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    ids, cu = batch(args.shape, config.vocab_size, device)
    if args.preset:
        print(f"preset: {preset(args.preset)} autotuner keys from {args.preset}", file=sys.stderr)
    extra = {} if cu is None else {"cu_seqlens": cu}
    if args.tuned:
        write_tuned_on_sigterm(args.tuned)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, **extra).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    start = time.time()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warm = time.time() - start
    if args.tuned:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        write_tuned(args.tuned)
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    secs = time.time() - start
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        prof.export_chrome_trace(args.profile)
    result = {
        "peer": "fla-0.6.0" + ("+compile" if args.compile else ""),
        "config": args.config.rsplit("/", 1)[-1].removesuffix(".json"),
        "shape": args.shape,
        "tokens_per_s": round(ids.numel() * args.steps / secs),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        # flame-train's log counts the peak reservation plus the CUDA context (cudaMemGetInfo).
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        "warmup_s": round(warm, 1),
        "loss": round(loss.item(), 3),
        "gpu": torch.cuda.get_device_name(),
        "fla640_ignored": args.ignore_fla640,
    }
    print("RESULT", json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
