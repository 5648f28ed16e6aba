"""megatron-core's GPTDataset + BlendedDataset sample order, without torch: the oracle for flame-stream's
`order = "megatron"`.

Runs megatron-core's real `BlendedMegatronDatasetBuilder(GPTDataset, ...)` (the installed wheel's files
and its compiled `helpers_cpp`, not copies) with stub modules for `torch` and for the package
`__init__`s that would import it, exactly as a Megatron pretraining job builds its datasets from
`--data-path`, `--split`, `--seq-length`, `--seed` and the number of training samples. Then reads each
asked-for sample through `GPTDataset._query_document_sample_shuffle_indices`, Megatron's own token
lookup (the `text` that `__getitem__` turns into `tokens = text[:-1]`, `labels = text[1:]`).

Usage: python megatron_order_oracle.py JOB.json  ->  JSON on stdout.

Job: {"prefixes": [P, ...], "weights": [w, ...] or null, "split": "969,30,1", "split_name": "train",
      "seq_len": S, "seed": R, "num_samples": N, "samples": [k, ...], "hash_from": H}
  One prefix without weights builds a plain GPTDataset (Megatron's `--data-path P`); otherwise the
  weighted blend (`--data-path w1 P1 w2 P2 ...`).
Result: {"size": len(dataset), "samples": [{"index": k, "dataset": d, "text": [...]}, ...]}; samples at
  positions >= H (default: none) carry "sha256" of the text's decimal ids joined by "," instead of "text".
"""

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import types

import numpy


def _stub(name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def _load():
    spec = importlib.util.find_spec("megatron")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("megatron-core is not installed in this interpreter (run tools/setup-python.sh)")
    root = os.path.join(list(spec.submodule_search_locations)[0], "core")

    torch = _stub("torch", Tensor=numpy.ndarray)
    torch.utils = _stub("torch.utils")
    torch.utils.data = _stub("torch.utils.data", Dataset=object)
    torch.distributed = types.SimpleNamespace(is_initialized=lambda: False, get_rank=lambda: 0)
    torch.cuda = types.SimpleNamespace(device_count=lambda: 0, is_available=lambda: False)
    for name, path in [("megatron", os.path.dirname(root)), ("megatron.core", root),
                       ("megatron.core.datasets", os.path.join(root, "datasets"))]:
        _stub(name).__path__ = [path]
    _stub("megatron.core.utils", log_single_rank=lambda logger, level, message: None)
    _stub("megatron.core.tokenizers", MegatronTokenizerBase=object)
    _stub("megatron.core.msc_utils",
          MultiStorageClientFeature=types.SimpleNamespace(is_enabled=lambda: False, import_package=None))

    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    return BlendedMegatronDatasetBuilder, GPTDataset, GPTDatasetConfig


class _Tokenizer:
    """What the config and the cache key need of a tokenizer."""

    vocab_size = 1 << 31
    eod = 0
    pad = -1
    unique_identifiers = {"class": "flame-oracle"}


def main():
    logging.disable(logging.CRITICAL)
    builder_class, gpt_dataset, config_class = _load()
    with open(sys.argv[1]) as f:
        job = json.load(f)
    prefixes, weights = job["prefixes"], job.get("weights")
    blend = (prefixes, weights)
    # Megatron's default cache is PREFIX/cache/: keep the datasets' directory clean.
    cache = tempfile.mkdtemp(prefix="megatron-cache-")
    config = config_class(
        random_seed=job["seed"], sequence_length=job["seq_len"], blend=blend, split=job["split"],
        path_to_cache=cache, tokenizer=_Tokenizer(), reset_position_ids=False, reset_attention_mask=False,
        eod_mask_loss=False, create_attention_mask=False, mid_level_dataset_surplus=0.005,
    )
    which = ["train", "valid", "test"].index(job["split_name"])
    # Megatron asks every split for samples; the others get one (their indices do not affect this one's).
    sizes = [1, 1, 1]
    sizes[which] = job["num_samples"]
    dataset = builder_class(gpt_dataset, sizes, lambda: True, config).build()[which]

    hash_from = job.get("hash_from", len(job["samples"]))

    def lookup(position, k):
        if hasattr(dataset, "dataset_index"):  # BlendedDataset
            d = int(dataset.dataset_index[k])
            inner, j = dataset.datasets[d], int(dataset.dataset_sample_index[k])
        else:
            d, inner, j = 0, dataset, k
        text, _ = inner._query_document_sample_shuffle_indices(j)
        text = [int(t) for t in text]
        if position >= hash_from:
            return {"index": k, "dataset": d, "sha256": hashlib.sha256(",".join(map(str, text)).encode()).hexdigest()}
        return {"index": k, "dataset": d, "text": text}

    samples = [lookup(p, k) for p, k in enumerate(job["samples"])]
    shutil.rmtree(cache, ignore_errors=True)
    json.dump({"size": len(dataset), "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main()
