"""gigatoken 0.10.0 on the same documents as src/main.rs: exactness against the Python `tokenizers` and
speed, per document on one thread (`encode`) and over the files (`encode_files`, its own threads).
Usage: python gigatoken_eval.py [SHARED_DATA]   (in a venv with gigatoken==0.10.0 tokenizers==0.23.3)"""
import json, time, sys
import gigatoken, tokenizers
data = sys.argv[1] if len(sys.argv) > 1 else "../shared/data"
files = [f"{data}/corpus/jsonl/{f}.jsonl" for f in ["en-moby-dick", "en-jargon-devil", "multi-udhr", "code-go-std-1mb"]]
docs = [json.loads(l)["text"] for f in files for l in open(f)]
mb = sum(len(d.encode()) for d in docs) / 1e6
for name in ["gpt2", "mistral-7b-v0.1", "cl100k_base", "tekken-240911"]:
    path = f"{data}/tokenizers/{name}/tokenizer.json"
    ref = tokenizers.Tokenizer.from_file(path)
    want = [e.ids for e in ref.encode_batch_fast(docs, add_special_tokens=False)]
    g = gigatoken.Tokenizer(path)
    t = time.perf_counter(); got = [g.encode(d).tolist() for d in docs]; one = time.perf_counter() - t
    equal = sum(a == b for a, b in zip(got, want))
    t = time.perf_counter(); arr = g.encode_files(gigatoken.JsonlFileSource(files)); files_s = time.perf_counter() - t
    fe = sum(list(a) == b for a, b in zip(arr.to_list(), want))
    print(f"{name:<16} gigatoken {gigatoken.__version__ if hasattr(gigatoken,'__version__') else '0.10.0'}: {equal}/{len(docs)} docs equal; "
          f"encode() one thread {mb/one:.1f} MB/s; encode_files (2 cores) {mb/files_s:.1f} MB/s, {fe}/{len(docs)} equal")
