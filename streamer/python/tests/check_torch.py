"""The torch side of the Python client, where torch is installed (the GPU machine; run by
tools/gpu/torch-client.sh): `FlameStreamDataset` under a `DataLoader` yields exactly the micro-batches
`flame-stream dump` prints, over the socket and over shared memory, in this process and in a worker.

Usage: check_torch.py ENDPOINT JOB.toml EXPECTED.jsonl   (EXPECTED: `flame-stream dump` of rank 1 of 2)
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from flame_stream import FlameStreamDataset  # noqa: E402

endpoint, job_path, expected_path = sys.argv[1:4]
job = open(job_path).read()
expected = [json.loads(line) for line in open(expected_path)]
checked = 0
for shared_memory in (None, 4):
    for workers in (0, 1):
        dataset = FlameStreamDataset(endpoint, job, rank=1, world_size=2, shared_memory=shared_memory)
        items = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers))
        for want in expected:
            item = next(items)
            assert item["input_ids"].dtype == torch.int64, item["input_ids"].dtype
            assert item["input_ids"].tolist() == want["tokens"], (shared_memory, workers, want["step"])
            assert torch.equal(item["labels"], item["input_ids"])
            if len(want["tokens"]) == 1:
                assert item["cu_seqlens"].dtype == torch.int32
                assert item["cu_seqlens"].tolist() == want["cu_seqlens"][0]
            checked += 1
print("ok", checked, "torch", torch.__version__)
