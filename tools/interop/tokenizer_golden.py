"""Golden token-id digests of the exactness fixtures (tests/data/tokenizers), from the Python `tokenizers`
library, which flame-prep's ids must equal (preprocess/tests/tokenizer_fixtures.rs).

Usage: tokenizer_golden.py [NAME...]   (default: every fixture in tests/data/tokenizers/PROVENANCE.md's order)

Encodes every document of ../shared/data/corpus (the `text` column of the fineweb-schema parquet files and
the `text` of the jsonl files, in natural file order) and of ../shared/data/golden/texts.jsonl with each
fixture tokenizer (made ready by tools/fetch-tokenizers.sh), the way flame-prep encodes by default:
`add_special_tokens=True` (`--bos tokenizer`: what the post-processor adds) and literal special-token
strings as plain text (`encode_special_tokens = True`; non-special added tokens are still matched, as in
flame-prep). Writes tests/data/tokenizers/<NAME>/ids.digest:

    # comment lines
    tokenizer <name> <sha256 of tokenizer.json>
    reference tokenizers==<version> add_special_tokens=1 encode_special_tokens=1
    affixes <ids the post-processor puts before a document, comma-separated, or -> <after, or ->
    source <path under ../shared/data> <sha256 of the file> <documents> <tokens> <sha256 of its id stream>
    ...
    total <documents> <tokens>
    <tokens> <first 16 hex digits of the sha256 of the ids as little-endian u32>   (one line per document)

A source's id stream is, for each document in order, its token count then its ids, all little-endian u32.
Needs `tokenizers` and `pyarrow` (the bench venv has both: tools/setup-python.sh bench; FLAME_SHARED names
another ../shared). Takes a few minutes per tokenizer on 2 cores.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy
import pyarrow.parquet
import tokenizers
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "data" / "tokenizers"
SHARED = pathlib.Path(os.environ.get("FLAME_SHARED", ROOT.parent / "shared")) / "data"
# PROVENANCE.md's order.
NAMES = [
    "qwen3",
    "gpt-oss",
    "gpt-4o",
    "deepseek-v3",
    "gemma-3",
    "llama-3",
    "phi-3",
    "bert-base-uncased",
    "botchan-unigram",
    "kyoto-unigram",
    "claude",
]


def sources():
    """(path under SHARED, texts) for every source, in the digest's order."""
    parquet = sorted((SHARED / "corpus").glob("**/*.parquet"))
    jsonl = sorted((SHARED / "corpus").glob("**/*.jsonl"))
    for path in parquet:
        texts = pyarrow.parquet.read_table(path, columns=["text"]).column("text").to_pylist()
        yield path.relative_to(SHARED).as_posix(), path, texts
    for path in jsonl + [SHARED / "golden" / "texts.jsonl"]:
        with open(path, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()]
        yield path.relative_to(SHARED).as_posix(), path, texts


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def affixes(tok):
    plain = tok.encode("a", add_special_tokens=False).ids
    special = tok.encode("a", add_special_tokens=True).ids
    at = next(i for i in range(len(special) - len(plain) + 1) if special[i : i + len(plain)] == plain)
    show = lambda ids: ",".join(map(str, ids)) or "-"  # noqa: E731
    return show(special[:at]), show(special[at + len(plain) :])


def digest(name, tokenizer_json, corpus):
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.encode_special_tokens = True
    before, after = affixes(tok)
    header = [
        f"# Token ids of ../shared/data's documents under tests/data/tokenizers/{name}, from the Python tokenizers",
        "# library: written by tools/interop/tokenizer_golden.py, checked by preprocess/tests/tokenizer_fixtures.rs.",
        f"tokenizer {name} {sha256_file(tokenizer_json)}",
        f"reference tokenizers=={tokenizers.__version__} add_special_tokens=1 encode_special_tokens=1",
        f"affixes {before} {after}",
    ]
    lines, total_docs, total_tokens = [], 0, 0
    for rel, path, texts in corpus:
        stream, num_tokens = hashlib.sha256(), 0
        for start in range(0, len(texts), 64):
            for encoding in tok.encode_batch_fast(texts[start : start + 64], add_special_tokens=True):
                ids = numpy.asarray(encoding.ids, dtype="<u4")
                stream.update(numpy.uint32(len(ids)).astype("<u4").tobytes())
                stream.update(ids.tobytes())
                lines.append(f"{len(ids)} {hashlib.sha256(ids.tobytes()).hexdigest()[:16]}")
                num_tokens += len(ids)
        header.append(f"source {rel} {sha256_file(path)} {len(texts)} {num_tokens} {stream.hexdigest()}")
        total_docs += len(texts)
        total_tokens += num_tokens
    header.append(f"total {total_docs} {total_tokens}")
    return "\n".join(header + lines) + "\n", total_docs, total_tokens


def main():
    names = sys.argv[1:] or NAMES
    unknown = set(names) - set(NAMES)
    if unknown:
        raise SystemExit(f"unknown fixture(s) {sorted(unknown)}; known: {NAMES}")
    cache = subprocess.run(
        ["bash", str(ROOT / "tools" / "fetch-tokenizers.sh"), *names], check=True, capture_output=True, text=True
    ).stdout.strip()
    corpus = list(sources())
    for name in names:
        text, docs, tokens = digest(name, pathlib.Path(cache) / name / "tokenizer.json", corpus)
        out = FIXTURES / name / "ids.digest"
        out.write_text(text, encoding="utf-8")
        print(f"{out.relative_to(ROOT)}: {docs} documents, {tokens} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
