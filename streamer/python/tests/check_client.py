"""Run by streamer/tests/python.rs: the Python client against a live flame-stream.

Usage: check_client.py ENDPOINT JOB.toml EXPECTED.json
EXPECTED holds, for rank 1 of 2, steps 0..2, the samples the Rust stream computes. Exits non-zero on any
difference; also checks that an impossible rank is refused with the server's message. On a unix://
endpoint it checks the same batches through a shared-memory ring.
"""

import json
import sys

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
from flame_stream import Client, ServerError  # noqa: E402

endpoint, job_path, expected_path = sys.argv[1:4]
job = open(job_path).read()
expected = json.load(open(expected_path))
modes = [None, 2] if endpoint.startswith("unix://") else [None]
for shared_memory in modes:
    client = Client(endpoint, job, rank=1, world_size=2, shared_memory=shared_memory)
    assert client.micro_steps == 2, client.micro_steps
    for want in expected + expected[:2]:  # and back to the start, as a restarted loop would
        batch = client.micro_batch(want["step"], want["micro_step"])
        assert batch.indices.tolist() == want["indices"], (shared_memory, batch.indices, want["indices"])
        assert batch.datasets.tolist() == want["datasets"]
        assert batch.tokens.tolist() == want["tokens"]
        assert [c.tolist() for c in batch.cu_seqlens] == want["cu_seqlens"]
    client.close()
try:
    Client(endpoint, job, rank=5, world_size=2, retries=0)
    raise SystemExit("rank 5 of 2 was accepted")
except ServerError as e:
    assert "rank 5" in str(e), e
print("ok", len(expected))
