"""Megatron-LM's `tools/preprocess_data.py` with `--partitions 1`, as a peer for tools/bench/prep.py.

`preprocess_data.py` lives in Megatron-LM's repository, which no package registry carries; the megatron-core
wheel carries the parts it runs on. This driver runs those real parts, loaded from the installed
megatron-core 0.16.1 wheel with torch stubbed out (as tools/interop/megatron_core_oracle.py does):

* `megatron/core/tokenizers/text/libraries/huggingface_tokenizer.py`: `HuggingFaceTokenizer`, the class
  behind `--tokenizer-type HuggingFaceTokenizer` (fast tokenizer, special tokens excluded: 0.16's default);
* `megatron/core/datasets/indexed_dataset.py`: `IndexedDatasetBuilder` and `DType.optimal_dtype`.

It drives them the way `preprocess_data.py` does (../shared/notes/megatron.md §2.1): a
`multiprocessing.Pool(--workers)` whose workers each build the tokenizer once, then `json.loads` a line and
encode its text; `pool.imap(encode, lines, 32)` keeps input order; the one parent process writes every
document through `add_document` and finalizes the index.

Usage: python megatron_preprocess.py --input X.jsonl --output-prefix P --tokenizer-model DIR --workers 2
"""

import argparse
import json
import multiprocessing
import os
import sys
import time
import types

# transformers decides whether torch is present when first imported: import it before torch is stubbed.
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402,F401

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
from megatron_core_oracle import _load_indexed_dataset  # noqa: E402  (stubs torch, loads the real file)


def _load_huggingface_tokenizer():
    """The wheel's HuggingFaceTokenizer, with package shells so no torch-importing `__init__` runs.

    Call after `_load_indexed_dataset`, which installs the shells of `megatron` and `megatron.core`."""
    root = sys.modules["megatron.core"].__path__[0]
    for name in ["megatron.core.tokenizers", "megatron.core.tokenizers.text",
                 "megatron.core.tokenizers.text.libraries"]:
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(root, *name.split(".")[2:])]
        sys.modules[name] = package
    from megatron.core.tokenizers.text.libraries.huggingface_tokenizer import HuggingFaceTokenizer

    return HuggingFaceTokenizer


class Encoder:
    """preprocess_data.py's Encoder: the tokenizer is built in each worker by `initializer`."""

    def __init__(self, args):
        self.args = args

    def initializer(self):
        Encoder.tokenizer = _load_huggingface_tokenizer()(
            self.args.tokenizer_model, use_fast=True,
            include_special_tokens=self.args.tokenizer_hf_include_special_tokens)

    def encode(self, json_line):
        data = json.loads(json_line)
        ids, lens = {}, {}
        for key in self.args.json_keys:
            text = data[key]
            sentences = text if isinstance(text, list) else [text]
            doc_ids, sentence_lens = [], []
            for sentence in sentences:
                sentence_ids = Encoder.tokenizer.text_to_ids(sentence)
                if len(sentence_ids) > 0:
                    doc_ids.extend(sentence_ids)
                    sentence_lens.append(len(sentence_ids))
            if len(doc_ids) > 0 and self.args.append_eod:
                doc_ids.append(Encoder.tokenizer.eod)
                sentence_lens[-1] += 1
            ids[key], lens[key] = doc_ids, sentence_lens
        return ids, lens, len(json_line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--tokenizer-model", required=True)
    parser.add_argument("--json-keys", nargs="+", default=["text"])
    parser.add_argument("--append-eod", action="store_true")
    # megatron-core 0.16's flag; from 0.17 it is the default (`tokenizer(text).input_ids`, BOS included).
    parser.add_argument("--tokenizer-hf-include-special-tokens", action="store_true")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--log-interval", type=int, default=1000)
    args = parser.parse_args()

    indexed_dataset = _load_indexed_dataset()
    encoder = Encoder(args)
    encoder.initializer()
    vocab_size = Encoder.tokenizer.vocab_size
    start = time.perf_counter()
    with open(args.input, "r", encoding="utf-8") as fin:
        pool = multiprocessing.Pool(args.workers, initializer=encoder.initializer)
        encoded_docs = pool.imap(encoder.encode, fin, 32)
        builders, prefixes = {}, {}
        for key in args.json_keys:
            prefixes[key] = f"{args.output_prefix}_{key}_document"
            builders[key] = indexed_dataset.IndexedDatasetBuilder(
                prefixes[key] + ".bin", dtype=indexed_dataset.DType.optimal_dtype(vocab_size))
        total_bytes = 0
        for i, (doc, sentence_lens, num_bytes) in enumerate(encoded_docs, start=1):
            total_bytes += num_bytes
            for key in doc:
                builders[key].add_document(doc[key], sentence_lens[key])
            if i % args.log_interval == 0:
                elapsed = time.perf_counter() - start
                print(f"Processed {i} documents ({i / elapsed:.1f} docs/s, "
                      f"{total_bytes / elapsed / 1024 / 1024:.2f} MB/s).", file=sys.stderr)
        pool.close()
        pool.join()
    for key in args.json_keys:
        builders[key].finalize(prefixes[key] + ".idx")


if __name__ == "__main__":
    main()
