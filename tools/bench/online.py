"""flame-stream serving raw text with online tokenization (a `streaming = true` job) beside flame's online
pipeline, in one run: issue 19's benchmark (tools/bench/online.sh builds flame-stream and calls this).

flame-stream  `flame-stream serve`, then one client, `flame-stream dump --shared-memory 4 --hash`, reads
              --steps micro-batches of 4 × 2048 tokens of a streaming job over the shared corpus's parquet
              files (fineweb-edu schema) with --tokenizer; served tokens/s = tokens / the dump's wall
              time, the job's opening (the tokenizer's load) included.
flame         flame's `OnlineTokenizedIterableDataset` as flame-org/flame runs it (../shared/notes/flame.md
              §1.3, §1.4): HF `datasets` streaming over the same files, `shuffle(seed, buffer_size=1024)`,
              texts 64 at a time through the `transformers` fast tokenizer (`add_special_tokens=True`),
              `state_dict()` recorded per document, greedy packing into 2048-token windows, batches of 4
              as int64 arrays (numpy: the benchmarks' venv has no torch; flame makes torch tensors the
              same way); and again without the per-document `state_dict()` (the faster of the
              two is the ratio's peer).
Both read the same tokens' worth of batches, one process each on this machine. Prints tokens/s of each,
the ratio (issue 19: at least 10×) and whether flame-stream serves at least 0.8 M tokens/s (eight H100s
training transformer_340M); writes ~/.cache/flame/bench/online/results.json.
"""

import argparse
import glob
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

SEQ_LEN, MICRO_BATCH = 2048, 4


def parquet_files(shared):
    return sorted(glob.glob(os.path.join(shared, "data/corpus/fineweb-edu-schema/data/*.parquet")))


def run_flame(root, files, tokenizer, steps, work):
    sock = os.path.join(work, "s.sock")
    server = subprocess.Popen([str(root / "target/release/flame-stream"), "serve", "--listen", f"unix://{sock}",
                               "--cache-dir", os.path.join(work, "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        server.stdout.readline()  # "listening on ...": the socket is bound
        job = os.path.join(work, "job.toml")
        with open(job, "w") as f:
            f.write(f'seed = 42\nseq_len = {SEQ_LEN}\nmicro_batch_size = {MICRO_BATCH}\n'
                    f'global_batch_size = {MICRO_BATCH}\ntokenizer = "{tokenizer}"\nstreaming = true\n'
                    f'[[datasets]]\ndataset = "{os.path.dirname(files[0])}/*.parquet"\n')
        start = time.perf_counter()
        subprocess.run([str(root / "target/release/flame-stream"), "dump", "--endpoint", f"unix://{sock}",
                        "--job", job, "--steps", str(steps), "--hash", "--shared-memory", "4"],
                       check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
    finally:
        server.kill()
    return seconds


def run_flame_pipeline(files, tokenizer_dir, steps, record_states):
    """flame's OnlineTokenizedIterableDataset loop, as flame/data.py runs it, for `steps` batches."""
    import numpy as np
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    start = time.perf_counter()
    data = load_dataset("parquet", data_files=files, split="train", streaming=True)
    data = data.shuffle(seed=42, buffer_size=1024)
    tokens, batch, batches, states = [], [], 0, None
    texts = []

    def documents():
        nonlocal states
        while True:
            for sample in data:
                if record_states:
                    states = data.state_dict()
                texts.append(sample["text"])
                if len(texts) == 64:
                    yield from tokenizer(texts, return_attention_mask=False)["input_ids"]
                    texts.clear()

    for ids in documents():
        tokens.extend(ids)
        while len(tokens) >= SEQ_LEN:
            batch.append(np.asarray(tokens[:SEQ_LEN], dtype=np.int64))
            tokens = tokens[SEQ_LEN:]
            if len(batch) == MICRO_BATCH:
                np.stack(batch)
                batch, batches = [], batches + 1
                if batches == steps:
                    return time.perf_counter() - start
    raise AssertionError("unreachable: the loop repeats the dataset")


def tokenizer_dir(tokenizer, work):
    """A directory AutoTokenizer loads: the tokenizer.json and a config naming Mistral's specials."""
    out = os.path.join(work, "tokenizer")
    os.makedirs(out, exist_ok=True)
    with open(tokenizer, "rb") as src, open(os.path.join(out, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "model_max_length": 10**9}, f)
    return out


def main():
    root = pathlib.Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(root.parent / "shared"))
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the shared Mistral-7B-v0.1)")
    # 2000 micro-batches (16.4 M tokens): flame-stream serves them in about a second, so that its job's
    # opening (the tokenizer's load, counted in its time) no longer dominates.
    parser.add_argument("--steps", type=int, default=2000, help="micro-batches of 4 × 2048 tokens each side reads")
    args = parser.parse_args()
    tokenizer = args.tokenizer or os.path.join(args.shared, "data/tokenizers/mistral-7b-v0.1/tokenizer.json")
    files = parquet_files(args.shared)
    tokens = args.steps * MICRO_BATCH * SEQ_LEN
    results = {"steps": args.steps, "tokens": tokens, "tokenizer": tokenizer, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as work:
        results["flame_stream_seconds"] = run_flame(root, files, tokenizer, args.steps, work)
        tok_dir = tokenizer_dir(tokenizer, work)
        results["flame_pipeline_seconds"] = run_flame_pipeline(files, tok_dir, args.steps, True)
        results["flame_pipeline_no_states_seconds"] = run_flame_pipeline(files, tok_dir, args.steps, False)
    rate = {k.removesuffix("_seconds"): tokens / v for k, v in results.items() if k.endswith("_seconds")}
    peer = max(rate["flame_pipeline"], rate["flame_pipeline_no_states"])
    ratio = rate["flame_stream"] / peer
    results.update(tokens_per_s=rate, ratio=ratio)
    print(f"{tokens / 1e6:.1f} M tokens served as {args.steps} micro-batches of {MICRO_BATCH} × {SEQ_LEN}, "
          f"{os.cpu_count()} CPUs")
    print(f"  flame-stream, streaming job, shared memory  {rate['flame_stream'] / 1e6:8.2f} M tokens/s")
    print(f"  flame's pipeline (datasets streaming + tokenizer, state per document)  "
          f"{rate['flame_pipeline'] / 1e6:8.2f} M tokens/s")
    print(f"  flame's pipeline without the per-document state  {rate['flame_pipeline_no_states'] / 1e6:8.2f} M tokens/s")
    print(f"  flame-stream = {ratio:.1f}× flame's faster pipeline ({'meets' if ratio >= 10 else 'MISSES'} ≥ 10×); "
          f"{'meets' if rate['flame_stream'] >= 0.8e6 else 'MISSES'} 0.8 M tokens/s")
    out = pathlib.Path.home() / ".cache/flame/bench/online"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
