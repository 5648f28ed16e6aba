"""megatron-core as a test oracle for flame's Megatron format, without torch.

Loads megatron-core's real `megatron/core/datasets/indexed_dataset.py` (the installed wheel's file, not a
copy) with stub modules for `torch` and for the package `__init__`s that would import torch, so that its
`IndexedDatasetBuilder` writes and its `IndexedDataset` reads exactly as in a Megatron training job.

Usage: python megatron_core_oracle.py JOBS.json  ->  one JSON result per job on stdout (a JSON list).

Jobs:
  {"op": "write", "prefix": P, "dtype_code": 8, "multimodal": false, "steps": [...]}
      steps: ["item", [ids], mode] | ["end"] | ["document", [ids], [lengths]] | ["append", PREFIX]
      -> {"ok": true}
  {"op": "read", "prefix": P, "multimodal": false}
      -> {"dtype_code", "sequence_lengths", "sequence_pointers", "document_indices", "sequence_modes",
          "sequences": [[...], ...], "documents": [[...], ...]}
  A failing job gives {"error": "<exception>"} and the others still run.
"""

import importlib.util
import json
import logging
import os
import sys
import types

import numpy


def _load_indexed_dataset():
    spec = importlib.util.find_spec("megatron")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("megatron-core is not installed in this interpreter (run tools/setup-python.sh)")
    root = os.path.join(list(spec.submodule_search_locations)[0], "core")

    torch = types.ModuleType("torch")
    torch.utils = types.ModuleType("torch.utils")
    torch.utils.data = types.ModuleType("torch.utils.data")
    torch.utils.data.Dataset = object
    torch.distributed = types.SimpleNamespace(is_initialized=lambda: False, get_rank=lambda: 0)
    torch.Tensor = numpy.ndarray
    for name, module in [("torch", torch), ("torch.utils", torch.utils), ("torch.utils.data", torch.utils.data)]:
        sys.modules[name] = module

    # Package shells whose __init__ (which imports torch and all of megatron) never runs.
    for name, path in [("megatron", os.path.dirname(root)), ("megatron.core", root),
                       ("megatron.core.datasets", os.path.join(root, "datasets"))]:
        package = types.ModuleType(name)
        package.__path__ = [path]
        sys.modules[name] = package
    utils = types.ModuleType("megatron.core.utils")
    utils.log_single_rank = lambda logger, level, message: logger.log(level, message)
    sys.modules["megatron.core.utils"] = utils

    import megatron.core.datasets.indexed_dataset as indexed_dataset  # noqa: E402  (the real file)

    return indexed_dataset


class _AsTensor:
    """What `IndexedDatasetBuilder.add_item` needs of a tensor: `.numpy()`."""

    def __init__(self, values):
        self._values = numpy.asarray(values, dtype=numpy.int64)

    def numpy(self):
        return self._values


def _write(md, job):
    dtype = md.DType.dtype_from_code(job["dtype_code"])
    builder = md.IndexedDatasetBuilder(job["prefix"] + ".bin", dtype=dtype, multimodal=job.get("multimodal", False))
    for step in job["steps"]:
        if step[0] == "item":
            builder.add_item(_AsTensor(step[1]), mode=step[2] if len(step) > 2 else 0)
        elif step[0] == "end":
            builder.end_document()
        elif step[0] == "document":
            builder.add_document(numpy.asarray(step[1], dtype=numpy.int64), step[2])
        elif step[0] == "append":
            builder.add_index(step[1])
        else:
            raise ValueError(f"unknown step {step[0]!r}")
    builder.finalize(job["prefix"] + ".idx")
    return {"ok": True}


def _read(md, job):
    multimodal = job.get("multimodal", False)
    dataset = md.IndexedDataset(job["prefix"], multimodal=multimodal)
    index = dataset.index

    def sequence(i):
        item = dataset[i]
        return (item[0] if multimodal else item).tolist()

    sequences = [sequence(i) for i in range(len(dataset))]
    bounds = index.document_indices.tolist()
    return {
        "dtype_code": md.DType.code_from_dtype(index.dtype),
        "sequence_lengths": index.sequence_lengths.tolist(),
        "sequence_pointers": index.sequence_pointers.tolist(),
        "document_indices": bounds,
        "sequence_modes": None if index.sequence_modes is None else index.sequence_modes.tolist(),
        "sequences": sequences,
        "documents": [[t for i in range(bounds[d], bounds[d + 1]) for t in sequences[i]] for d in range(len(bounds) - 1)],
    }


def main():
    logging.disable(logging.CRITICAL)
    md = _load_indexed_dataset()
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    results = []
    for job in jobs:
        try:
            results.append(_write(md, job) if job["op"] == "write" else _read(md, job))
        except Exception as error:  # noqa: BLE001 - reported per job to the Rust test
            results.append({"error": f"{type(error).__name__}: {error}"})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
