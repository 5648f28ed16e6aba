"""Run by streamer/tests/python.rs in every test run (and by tools/gpu/torch-client.sh on other torch builds):
`FlameStreamDataset` under a torch `DataLoader` yields exactly the micro-batches one process reads, in
order and no more, for any number of workers, over the socket and over shared memory, and stops cleanly
at `steps` or at the job's end.

Usage: check_torch.py PLAN.json
PLAN is {"cases": [CASE, ...]}; each CASE has "endpoint", "job" (a job TOML file), "rank", "world_size",
"workers", "shared_memory" (slots, or null), "start_step", "steps" (null: to the job's end), "layout"
("flat" or "per_sample") and "expected": a file of the rank's micro-batches in `flame-stream dump`'s JSON
lines, from step 0 on (to the job's end when "steps" is null). Prints "ok N", N the micro-batches checked.
"""

import json
import os
import sys
import warnings

import torch

# 3 workers on a 2-core machine are the point (an uneven split), not a mistake.
warnings.filterwarnings("ignore", message="This DataLoader will create")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from flame_stream import FlameStreamDataset  # noqa: E402

checked = 0
for case in json.load(open(sys.argv[1]))["cases"]:
    start, steps, layout = case["start_step"], case["steps"], case["layout"]
    expected = [json.loads(line) for line in open(case["expected"])]
    expected = [e for e in expected if e["step"] >= start and (steps is None or e["step"] < start + steps)]
    dataset = FlameStreamDataset(case["endpoint"], open(case["job"]).read(), rank=case["rank"],
                                 world_size=case["world_size"], start_step=start, steps=steps,
                                 shared_memory=case["shared_memory"], layout=layout)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=case["workers"],
                                         pin_memory=torch.cuda.is_available())
    got = list(loader)  # to its end: `steps`, or the job's
    where = {k: case[k] for k in ("workers", "shared_memory", "start_step", "steps", "layout")}
    assert len(got) == len(expected), (where, len(got), len(expected))
    for item, want in zip(got, expected):
        tokens, cu_seqlens = want["tokens"], want["cu_seqlens"]
        samples, seq_len = len(tokens), len(tokens[0])
        ids = item["input_ids"]
        assert ids.dtype == torch.int64 and torch.equal(item["labels"], ids), where
        if layout == "flat":
            # flame's varlen batch: one row of every sample's tokens, one cu_seqlens over it.
            assert ids.shape == (1, samples * seq_len), (where, ids.shape)
            assert ids.view(samples, seq_len).tolist() == tokens, (where, want["step"], want["micro_step"])
            flat = [0] + [i * seq_len + c for i, sample in enumerate(cu_seqlens) for c in sample[1:]]
            assert item["cu_seqlens"].dtype == torch.int32 and item["cu_seqlens"].tolist() == flat, where
            if samples == 1:
                assert item["cu_seqlens"].tolist() == cu_seqlens[0]
        else:
            assert ids.tolist() == tokens, (where, want["step"], want["micro_step"])
            assert [c.dtype for c in item["cu_seqlens"]] == [torch.int32] * samples, where
            assert [c.tolist() for c in item["cu_seqlens"]] == cu_seqlens, where
        checked += 1
print("ok", checked)
