"""flame-prep end to end against the tokenizer's raw-encode ceiling and two peers, in one run.

For each tokenizer (GPT-2 and Mistral-7B-v0.1 by default), on ../shared/data/corpus replicated to at least
--min-mib MiB of text:

* ceiling   the raw encode throughput of the `tokenizers` library flame-prep is built on, on the texts
            already in memory, all cores, three ways: the Python package's `encode_batch_fast`, and the
            Rust crate's `encode_batch_fast` and `encode_fast` on one thread per core
            (preprocess/examples/encode_ceiling.rs); the fastest of the three is the ceiling. Like
            flame-prep by default, each encodes a special token's string inside a document as text, so
            every row counts the same tokens (a row that does not is flagged: TOKEN COUNTS DIFFER);
* flame     `flame-prep --workers N` end to end (parquet in, Megatron `.bin/.idx` out), and again with
            `--context_length 2048 --shuffle` (packed windows, globally shuffled documents);
* megatron  Megatron's preprocess_data.py structure on megatron-core's own tokenizer and builder
            (megatron_preprocess.py; JSONL in, as it requires), `--workers N`, with 0.16's default
            (text -> tokens -> ids) and with `--tokenizer-hf-include-special-tokens` (0.17's default,
            `tokenizer(text).input_ids`, faster); the ratio is against the faster;
* datasets  flame's old `datasets.map` pipeline (datasets_map.py), `num_proc=N`, from an empty cache;
* gigatoken gigatoken's file API, `Tokenizer(tokenizer.json).encode_files(ParquetFileSource(files))`, the
            whole process (parquet in, ids in memory out; its own threads); flame-prep must be at least
            as fast, with a peak RSS of at most 1 GiB;
* stages    flame-prep's time per stage on one thread (read, scan, encode = scan + cache + BPE, write;
            preprocess/examples/stages.rs), and the scan by the general regex engine for byte-level BPE.

--peers picks which of ceiling, megatron, datasets, gigatoken run (all by default).

flame-prep and gigatoken run --repeat times (3) and the fastest counts. Text MB/s counts the UTF-8 bytes of the documents' text (the same for every tool); peak RSS is the
largest single process's (`/usr/bin/time`), so for the multi-process peers it understates their total.
Then the peak RSS of flame-prep on a single document of over 200 MB (the 1 GiB bound).
Prints a table and the ratios, writes results.json in --work. Run through tools/bench/prep.sh.

Issue 18's benchmark (tools/bench/prep-issue18.sh) runs the same code with other arguments: --corpus, the
unique corpus of tools/bench/unique-corpus.sh instead of the replicated shared one (--max-mib then takes
its first documents up to that size, for a small run); --tokenizers issue18, the fifteen tokenizers
(ISSUE18_TOKENIZERS: the four shared ones and the fixtures of tools/fetch-tokenizers.sh, found in
--fixtures); --peers ceiling,gigatoken --no-packed --no-stages; and --issue18, which prints one row per
tokenizer (MB/s of flame-prep, gigatoken and the ceiling, the two ratios, flame-prep's peak RSS) with the
verdict against issue 18's bar: at least 1.0x gigatoken where gigatoken loads the tokenizer, else at least
5x the ceiling, and a peak RSS under 1 GiB. A tokenizer gigatoken cannot load is reported as such, not
as a failure of the run.
"""

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SPECIALS = {
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "mistral-7b-v0.1": {"bos_token": "<s>", "eos_token": "</s>"},
    "cl100k_base": {"eos_token": "<|endoftext|>"},
    "tekken-240911": {"bos_token": "<s>", "eos_token": "</s>"},
    # The fixtures of tools/fetch-tokenizers.sh, as each model's own tokenizer_config.json has them (they
    # ship no config; flame-prep, gigatoken and the ceiling never read these: the Megatron and datasets
    # peers do).
    "qwen3": {"eos_token": "<|endoftext|>"},
    "gpt-oss": {"bos_token": "<|startoftext|>", "eos_token": "<|return|>"},
    "gpt-4o": {"eos_token": "<|endoftext|>"},
    "deepseek-v3": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
    "gemma-3": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "llama-3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
    "phi-3": {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
    "bert-base-uncased": {"cls_token": "[CLS]", "sep_token": "[SEP]"},
    "botchan-unigram": {"eos_token": "</s>", "unk_token": "<unk>"},
    "kyoto-unigram": {"eos_token": "</s>", "unk_token": "<unk>"},
    "claude": {"eos_token": "<EOT>"},
}
ISSUE18_TOKENIZERS = ["gpt2", "mistral-7b-v0.1", "cl100k_base", "tekken-240911", "qwen3", "gpt-oss", "gpt-4o",
                      "deepseek-v3", "gemma-3", "llama-3", "phi-3", "bert-base-uncased", "botchan-unigram",
                      "kyoto-unigram", "claude"]
MIB = 2**20
ROWS_PER_FILE = 20_000
ROWS_PER_GROUP = 1_000


def corpus_texts(shared):
    texts = []
    for path in sorted(glob.glob(os.path.join(shared, "data/corpus/fineweb-edu-schema/data/*.parquet"))):
        texts.extend(pq.read_table(path, columns=["text"]).column("text").to_pylist())
    for path in sorted(glob.glob(os.path.join(shared, "data/corpus/jsonl/*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f if line.strip())
    return texts


def build_corpus(shared, work, min_mib):
    """The corpus replicated to at least `min_mib` MiB of text, as parquet files and one JSONL file."""
    base = corpus_texts(shared)
    base_bytes = sum(len(t.encode()) for t in base)
    copies = -(-min_mib * 2**20 // base_bytes)
    key = hashlib.sha256(f"{base_bytes}:{len(base)}:{copies}:{ROWS_PER_FILE}".encode()).hexdigest()[:16]
    corpus = os.path.join(work, f"corpus-{key}")
    if not os.path.exists(os.path.join(corpus, "done")):
        shutil.rmtree(corpus, ignore_errors=True)
        os.makedirs(os.path.join(corpus, "parquet"))
        texts = base * copies
        for i, start in enumerate(range(0, len(texts), ROWS_PER_FILE)):
            table = pa.table({"text": texts[start:start + ROWS_PER_FILE]})
            pq.write_table(table, os.path.join(corpus, "parquet", f"train-{i:05d}.parquet"),
                           row_group_size=ROWS_PER_GROUP, compression="snappy")
        with open(os.path.join(corpus, "corpus.jsonl"), "w", encoding="utf-8") as f:
            for text in texts:
                f.write(json.dumps({"text": text}) + "\n")
        open(os.path.join(corpus, "done"), "w").close()
    return corpus, len(base) * copies, base_bytes * copies


def given_corpus(source, work, max_mib, peers):
    """`source`'s parquet files (tools/bench/unique-corpus.sh's directory), all or their first documents up
    to `max_mib` MiB of text, in the layout `build_corpus` makes (a JSONL copy only for the Megatron peer)."""
    files = sorted(glob.glob(os.path.join(source, "parquet", "*.parquet"))
                   or glob.glob(os.path.join(source, "*.parquet")))
    if not files:
        sys.exit(f"--corpus {source}: no parquet files in it or in its parquet/")
    stamp = "\n".join(f"{path}:{os.path.getsize(path)}:{os.path.getmtime(path)}" for path in files)
    key = hashlib.sha256(f"{stamp}:{max_mib}".encode()).hexdigest()[:16]
    corpus = os.path.join(work, f"corpus-given-{key}")
    if not os.path.exists(os.path.join(corpus, "done")):
        shutil.rmtree(corpus, ignore_errors=True)
        os.makedirs(corpus)
        if max_mib:
            os.makedirs(os.path.join(corpus, "parquet"))
            texts, total = [], 0
            for path in files:
                for text in pq.read_table(path, columns=["text"]).column("text").to_pylist():
                    if total >= max_mib * MIB:
                        break
                    texts.append(text)
                    total += len(text.encode())
            pq.write_table(pa.table({"text": texts}), os.path.join(corpus, "parquet", "train-00000.parquet"),
                           row_group_size=ROWS_PER_GROUP, compression="snappy")
        else:
            os.symlink(os.path.dirname(files[0]), os.path.join(corpus, "parquet"))
        open(os.path.join(corpus, "done"), "w").close()
    num_docs, text_bytes = 0, 0
    for path in sorted(glob.glob(os.path.join(corpus, "parquet", "*.parquet"))):
        texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        num_docs += len(texts)
        text_bytes += sum(len(t.encode()) for t in texts)
    if "megatron" in peers and not os.path.exists(os.path.join(corpus, "corpus.jsonl")):
        with open(os.path.join(corpus, "corpus.jsonl.tmp"), "w", encoding="utf-8") as f:
            for path in sorted(glob.glob(os.path.join(corpus, "parquet", "*.parquet"))):
                for text in pq.read_table(path, columns=["text"]).column("text").to_pylist():
                    f.write(json.dumps({"text": text}) + "\n")
        os.rename(os.path.join(corpus, "corpus.jsonl.tmp"), os.path.join(corpus, "corpus.jsonl"))
    return corpus, num_docs, text_bytes


def tokenizer_json(args, name):
    """The tokenizer.json of `name`: one of ../shared/data/tokenizers, else a fixture in --fixtures."""
    for base in (os.path.join(args.shared, "data/tokenizers"), args.fixtures):
        path = os.path.join(base, name, "tokenizer.json")
        if os.path.exists(path):
            return path
    sys.exit(f"tokenizer {name}: no {name}/tokenizer.json in {args.shared}/data/tokenizers or {args.fixtures} "
             "(bash tools/fetch-tokenizers.sh fetches the fixtures)")


def tokenizer_dir(args, name):
    """A directory `AutoTokenizer` and megatron-core can load: the tokenizer.json plus a config."""
    out = os.path.join(args.work, "tokenizers", name)
    os.makedirs(out, exist_ok=True)
    shutil.copyfile(tokenizer_json(args, name), os.path.join(out, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 10**9, **SPECIALS[name]}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return out


CEILING = r"""
import glob, json, sys, time
import pyarrow.parquet as pq
from tokenizers import Tokenizer
corpus, tokenizer = sys.argv[1], sys.argv[2]
texts = []
for path in sorted(glob.glob(corpus + "/parquet/*.parquet")):
    texts.extend(pq.read_table(path, columns=["text"]).column("text").to_pylist())
tok = Tokenizer.from_file(tokenizer)
tok.encode_special_tokens = True  # as flame-prep by default: a special token's string in a document is text
start, tokens = time.perf_counter(), 0
for i in range(0, len(texts), 1024):
    tokens += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i:i + 1024], add_special_tokens=True))
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": tokens}))
"""


GIGATOKEN = r"""
import glob, json, sys
import gigatoken
corpus, tokenizer = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(corpus + "/parquet/*.parquet"))
try:
    tokenizer = gigatoken.Tokenizer(tokenizer)
except Exception as error:  # a tokenizer it does not support (e.g. WordPiece): a finding, not a crash
    sys.exit("does not load: " + str(error).strip().splitlines()[0])
ids = tokenizer.encode_files(gigatoken.ParquetFileSource(files))
print(json.dumps({"tokens": int(ids.layout.offsets[-1]) - int(ids.layout.offsets[0])}))  # an awkward array
"""


def timed(cmd, env=None, cwd=None, may_fail=False):
    """Runs `cmd` under /usr/bin/time; returns (wall seconds, peak RSS MiB, stdout). A failure ends the
    benchmark, unless `may_fail`: then it returns the last line of the command's stderr instead."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as rss:
        start = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], env=env, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0 and may_fail:
            return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if done.returncode != 0:
            sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-4000:]}")
        return seconds, int(rss.read().split()[-1]) / 1024, done.stdout


def best_of(repeat, run):
    """The fastest of `repeat` runs of `run` (a `timed` call), with the largest peak RSS among them; the
    first run's error instead if it failed (a `may_fail` one)."""
    runs = [run()]
    if isinstance(runs[0], str):
        return runs[0]
    runs += [run() for _ in range(repeat - 1)]
    fastest = min(runs, key=lambda r: r[0])
    return fastest[0], max(r[1] for r in runs), fastest[2]


def count_megatron_tokens(prefix):
    with open(prefix + ".idx", "rb") as f:
        header = f.read(9 + 8 + 1 + 8)
    num_sequences = int.from_bytes(header[18:26], "little")
    import numpy
    lengths = numpy.fromfile(prefix + ".idx", dtype=numpy.int32, count=num_sequences, offset=34)
    return int(lengths.sum())


def bench_tokenizer(args, corpus, text_bytes, name):
    work = os.path.join(args.work, "runs", name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tok_json = tokenizer_json(args, name)
    python = sys.executable
    rows, failures = {}, {}

    peers = args.peers.split(",")
    if "ceiling" in peers:
        seconds, rss, out = timed([python, "-c", CEILING, corpus, tok_json])
        ceiling = json.loads(out)
        rows["tokenizers (Python) encode_batch_fast"] = (ceiling["seconds"], ceiling["tokens"], rss)
        seconds, rss, out = timed([args.encode_ceiling, os.path.join(corpus, "parquet"), tok_json])
        ceiling = json.loads(out)
        rows["tokenizers crate encode_batch_fast"] = (ceiling["batch_seconds"], ceiling["tokens"], rss)
        rows[f"tokenizers crate encode_fast × {ceiling['threads']} threads"] = (
            ceiling["threads_seconds"], ceiling["tokens"], rss)
    if "gigatoken" in peers:
        run = best_of(args.repeat, lambda: timed([python, "-c", GIGATOKEN, corpus, tok_json], may_fail=True))
        if isinstance(run, str):
            failures["gigatoken encode_files"] = run
        else:
            seconds, rss, out = run
            rows["gigatoken encode_files"] = (seconds, json.loads(out)["tokens"], rss)

    variants = [("flame-prep", [])]
    if not args.no_packed:
        variants.append(("flame-prep --context_length 2048 --shuffle", ["--context_length", "2048", "--shuffle"]))
    for label, extra in variants:
        out_dir = os.path.join(work, "flame")

        def flame_prep():
            shutil.rmtree(out_dir, ignore_errors=True)
            return timed([args.flame_prep, "--dataset", os.path.join(corpus, "parquet"),
                          "--tokenizer", tok_json, "--workers", str(args.workers),
                          "--output", out_dir, "--json", *extra])
        seconds, rss, out = best_of(args.repeat, flame_prep)
        rows[label] = (seconds, json.loads(out)["document_tokens"], rss)

    tok_dir = tokenizer_dir(args, name) if "megatron" in peers or "datasets" in peers else None
    for label, extra in [] if "megatron" not in peers else [("megatron preprocess_data.py (0.16 default)", []),
                         ("megatron ... --tokenizer-hf-include-special-tokens",
                          ["--tokenizer-hf-include-special-tokens"])]:
        prefix = os.path.join(work, "megatron", "out")
        shutil.rmtree(os.path.dirname(prefix), ignore_errors=True)
        os.makedirs(os.path.dirname(prefix))
        seconds, rss, _ = timed([python, os.path.join(HERE, "megatron_preprocess.py"),
                                 "--input", os.path.join(corpus, "corpus.jsonl"), "--output-prefix", prefix,
                                 "--tokenizer-model", tok_dir, "--workers", str(args.workers), *extra])
        rows[label] = (seconds, count_megatron_tokens(prefix + "_text_document"), rss)

    if "datasets" in peers:
        env = dict(os.environ, HF_DATASETS_CACHE=os.path.join(work, "hf-cache"), HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        seconds, rss, _ = timed([python, os.path.join(HERE, "datasets_map.py"),
                                 "--data-files", os.path.join(corpus, "parquet", "*.parquet"),
                                 "--tokenizer", tok_dir, "--output", os.path.join(work, "datasets"),
                                 "--num-proc", str(args.workers)], env=env)
        rows["flame datasets.map (legacy)"] = (seconds, None, rss)
    stages = None
    if not args.no_stages:
        _, _, out = timed([args.stages, os.path.join(corpus, "parquet"), tok_json])
        stages = json.loads(out)
    shutil.rmtree(work, ignore_errors=True)
    return rows, failures, stages


def long_document(args, name):
    """Peak RSS of flame-prep on one document of at least 200 MB (the corpus joined by line breaks)."""
    path = os.path.join(args.work, "one-200mb-document.jsonl")
    if not os.path.exists(path):
        body = "\n".join(corpus_texts(args.shared))
        copies = -(-200 * 10**6 // len(body.encode()))
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(json.dumps({"text": "\n".join([body] * copies)}) + "\n")
        os.rename(path + ".tmp", path)
    out_dir = os.path.join(args.work, "runs", "long")
    shutil.rmtree(out_dir, ignore_errors=True)
    tok_json = tokenizer_json(args, name)
    seconds, rss, out = timed([args.flame_prep, "--dataset", path, "--tokenizer", tok_json,
                               "--workers", str(args.workers), "--output", out_dir, "--json"])
    shutil.rmtree(out_dir, ignore_errors=True)
    summary = json.loads(out)
    print(f"\none {summary['text_bytes'] / 1e6:.0f} MB document, {name}: {seconds:.1f} s, peak RSS {rss:.0f} MiB "
          f"({'within' if rss <= 1024 else 'OVER'} the 1 GiB bound)")
    return {"text_bytes": summary["text_bytes"], "seconds": seconds, "peak_rss_mib": rss}


def issue18_table(tokenizers):
    """Prints issue 18's table, one row per tokenizer and one figure per cell (Markdown, for the README),
    with each tokenizer's verdict; returns the rows."""
    rows = []
    for name, result in tokenizers.items():
        table = result["rows"]
        flame, gigatoken = table["flame-prep"], table.get("gigatoken encode_files")
        ceilings = [row for label, row in table.items() if label.startswith("tokenizers")]
        ceiling = max(ceilings, key=lambda row: row["text_mb_per_s"]) if ceilings else None
        row = {"tokenizer": name, "flame_mb_per_s": flame["text_mb_per_s"],
               "flame_peak_rss_mib": flame["peak_rss_mib"],
               "gigatoken_mb_per_s": gigatoken and gigatoken["text_mb_per_s"],
               "gigatoken_peak_rss_mib": gigatoken and gigatoken["peak_rss_mib"],
               "gigatoken_error": result["failures"].get("gigatoken encode_files"),
               "ceiling_mb_per_s": ceiling and ceiling["text_mb_per_s"],
               "ceiling_peak_rss_mib": ceiling and ceiling["peak_rss_mib"]}
        row["flame_vs_gigatoken"] = gigatoken and flame["text_mb_per_s"] / gigatoken["text_mb_per_s"]
        row["flame_vs_ceiling"] = ceiling and flame["text_mb_per_s"] / ceiling["text_mb_per_s"]
        if gigatoken:
            row["bar"], fast = "≥ 1.0× gigatoken", row["flame_vs_gigatoken"] >= 1.0
        elif ceiling:
            row["bar"], fast = "≥ 5× ceiling", row["flame_vs_ceiling"] >= 5.0
        else:
            row["bar"], fast = "no peer ran", False
        row["meets"] = fast and flame["peak_rss_mib"] < 1024
        rows.append(row)

    def gigatoken_cell(row):
        if row["gigatoken_error"]:
            return "does not load" if row["gigatoken_error"].startswith("does not load") else "fails"
        return cell(row["gigatoken_mb_per_s"], ".1f")

    def cell(value, fmt):
        return "–" if value is None else format(value, fmt)

    print("\nissue 18: flame-prep end to end (parquet → Megatron shards) against gigatoken's file API and the "
          "`tokenizers` library's raw-encode ceiling; MB/s of text")
    print("\n| tokenizer | flame-prep MB/s | gigatoken MB/s | ceiling MB/s | ×gigatoken | ×ceiling "
          "| flame-prep peak RSS MiB | bar | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['tokenizer']} | {row['flame_mb_per_s']:.1f} | {gigatoken_cell(row)} "
              f"| {cell(row['ceiling_mb_per_s'], '.2f')} | {cell(row['flame_vs_gigatoken'], '.2f')} "
              f"| {cell(row['flame_vs_ceiling'], '.1f')} "
              f"| {row['flame_peak_rss_mib']:.0f} | {row['bar']} | {'meets' if row['meets'] else 'MISSES'} |")
    print(f"\n{sum(row['meets'] for row in rows)} of {len(rows)} tokenizers meet issue 18's bar (peak RSS under "
          "1 GiB, and ≥ 1.0× gigatoken where gigatoken loads the tokenizer, else ≥ 5× the ceiling)")
    for row in rows:
        if row["gigatoken_error"]:
            print(f"  gigatoken, {row['tokenizer']}: {row['gigatoken_error']}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flame-prep", default=os.path.join(ROOT, "target/release/flame-prep"))
    parser.add_argument("--encode-ceiling", default=os.path.join(ROOT, "target/release/examples/encode_ceiling"))
    parser.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    parser.add_argument("--work", default=os.path.expanduser("~/.cache/flame/bench/prep"))
    parser.add_argument("--stages", default=os.path.join(ROOT, "target/release/examples/stages"))
    parser.add_argument("--tokenizers", default="gpt2,mistral-7b-v0.1",
                        help="comma-separated names; 'issue18' for issue 18's fifteen")
    parser.add_argument("--fixtures", default=os.path.join(os.environ.get("FLAME_CACHE", os.path.expanduser(
        "~/.cache/flame")), "tokenizers"), help="where tools/fetch-tokenizers.sh put the other tokenizers")
    parser.add_argument("--peers", default="ceiling,megatron,datasets,gigatoken")
    parser.add_argument("--repeat", type=int, default=3, help="runs of flame-prep and gigatoken; the fastest counts")
    parser.add_argument("--min-mib", type=int, default=200, help="the shared corpus is replicated to this size")
    parser.add_argument("--corpus", help="a directory of parquet files (e.g. tools/bench/unique-corpus.sh's) "
                        "to use as it is instead of the replicated shared corpus")
    parser.add_argument("--max-mib", type=int, help="with --corpus: only its first documents up to this size")
    parser.add_argument("--no-packed", action="store_true", help="skip flame-prep --context_length 2048 --shuffle")
    parser.add_argument("--no-stages", action="store_true", help="skip the one-thread per-stage profile")
    parser.add_argument("--issue18", action="store_true",
                        help="print issue 18's table (one row per tokenizer) and its verdicts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--long-document", default="mistral-7b-v0.1",
                        help="tokenizer for the single-200-MB-document memory run ('' skips it)")
    args = parser.parse_args()
    if args.max_mib and not args.corpus:
        parser.error("--max-mib needs --corpus (the shared corpus is sized by --min-mib)")
    names = ISSUE18_TOKENIZERS if args.tokenizers == "issue18" else args.tokenizers.split(",")
    os.makedirs(args.work, exist_ok=True)

    if args.corpus:
        corpus, num_docs, text_bytes = given_corpus(args.corpus, args.work, args.max_mib, args.peers)
    else:
        corpus, num_docs, text_bytes = build_corpus(args.shared, args.work, args.min_mib)
    mb = text_bytes / 1e6
    print(f"corpus: {num_docs} documents, {mb:.1f} MB of text ({corpus}); workers {args.workers}; "
          f"{os.cpu_count()} CPUs")
    results = {"text_bytes": text_bytes, "documents": num_docs, "workers": args.workers, "corpus": corpus,
               "tokenizers": {}}
    for name in names:
        rows, failures, stages = bench_tokenizer(args, corpus, text_bytes, name)
        flame_seconds = rows["flame-prep"][0]
        ceiling_seconds = min([seconds for label, (seconds, _, _) in rows.items() if label.startswith("tokenizers")]
                              or [flame_seconds])
        ceiling_mbps = mb / ceiling_seconds
        print(f"\n{name}")
        print(f"  {'tool':48} {'seconds':>8} {'MB/s':>7} {'Mtok/s':>7} {'RSS MiB':>8} {'×ceiling':>8}")
        table = {}
        for label, (seconds, tokens, rss) in rows.items():
            mbps = mb / seconds
            tps = f"{tokens / seconds / 1e6:7.2f}" if tokens else f"{'-':>7}"
            print(f"  {label:48} {seconds:8.1f} {mbps:7.2f} {tps} {rss:8.0f} {mbps / ceiling_mbps:8.2f}")
            table[label] = {"seconds": seconds, "tokens": tokens, "peak_rss_mib": rss, "text_mb_per_s": mbps}
        for label, error in failures.items():
            print(f"  {label:48} {error}")
        for label, row in table.items():
            if label.startswith(("tokenizers", "gigatoken")) and row["tokens"] != table["flame-prep"]["tokens"]:
                print(f"  TOKEN COUNTS DIFFER: {label} counted {row['tokens']} tokens, "
                      f"flame-prep {table['flame-prep']['tokens']}")
        flame = table["flame-prep"]["seconds"]
        ratios = {}
        if "ceiling" in args.peers:
            ratios["flame_vs_ceiling"] = ceiling_seconds / flame
            verdict = "meets" if ratios["flame_vs_ceiling"] >= 0.8 else "MISSES"
            print(f"  flame-prep end to end = {ratios['flame_vs_ceiling']:.2f}× the raw-encode ceiling "
                  f"({verdict} the 0.8× requirement)")
        if "megatron" in args.peers:
            ratios["flame_speedup_vs_megatron"] = min(
                row["seconds"] for label, row in table.items() if label.startswith("megatron")) / flame
            print(f"  {ratios['flame_speedup_vs_megatron']:.2f}× the faster Megatron's speed")
        if "flame datasets.map (legacy)" in table and "flame-prep --context_length 2048 --shuffle" in table:
            ratios["flame_packed_speedup_vs_datasets_map"] = (
                table["flame datasets.map (legacy)"]["seconds"]
                / table["flame-prep --context_length 2048 --shuffle"]["seconds"])
            print(f"  packed+shuffled {ratios['flame_packed_speedup_vs_datasets_map']:.2f}× datasets.map's speed")
        if "gigatoken encode_files" in table:
            ratios["flame_vs_gigatoken"] = table["gigatoken encode_files"]["seconds"] / flame
            rss = table["flame-prep"]["peak_rss_mib"]
            verdict = "meets" if ratios["flame_vs_gigatoken"] >= 1.0 and rss <= 1024 else "MISSES"
            print(f"  flame-prep end to end = {ratios['flame_vs_gigatoken']:.2f}× gigatoken's speed, peak RSS "
                  f"{rss:.0f} MiB ({verdict} the ≥ 1.0×, ≤ 1 GiB requirement)")
        if stages:
            per_stage = {k: stages[k] for k in ("read", "scan", "encode", "write")}
            print("  one thread, per stage: " + ", ".join(
                f"{k} {v:.2f} s ({stages['text_bytes'] / 1e6 / v:.0f} MB/s)" for k, v in per_stage.items())
                  + f"; cache + BPE = encode - scan = {stages['encode'] - stages['scan']:.2f} s")
            if stages.get("scan_general") is not None:
                v = stages["scan_general"]
                print(f"  the same split by the general regex engine: {v:.2f} s "
                      f"({stages['text_bytes'] / 1e6 / v:.0f} MB/s)")
        results["tokenizers"][name] = {"rows": table, "ratios": ratios, "stages": stages, "failures": failures}
        sys.stdout.flush()
    if args.issue18:
        results["issue18"] = issue18_table(results["tokenizers"])
    if args.long_document:
        results["long_document"] = long_document(args, args.long_document)
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nresults: {os.path.join(args.work, 'results.json')}")


if __name__ == "__main__":
    main()
