"""Run by streamer/tests/python.rs: the Python client against a live flame-stream.

Usage: check_client.py ENDPOINT JOB.toml EXPECTED.json
EXPECTED holds, for rank 1 of 2, steps 0..2, the samples the Rust stream computes. Exits non-zero on any
difference; also checks that a wrong token is refused with the server's message.
"""

import json
import sys

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
from flame_stream import Client, ServerError  # noqa: E402

endpoint, job_path, expected_path = sys.argv[1:4]
job = open(job_path).read()
expected = json.load(open(expected_path))
client = Client(endpoint, job, rank=1, world_size=2)
assert client.micro_steps == 2, client.micro_steps
for want in expected:
    batch = client.micro_batch(want["step"], want["micro_step"])
    assert batch.indices.tolist() == want["indices"], (batch.indices, want["indices"])
    assert batch.datasets.tolist() == want["datasets"]
    assert batch.tokens.tolist() == want["tokens"]
    assert [c.tolist() for c in batch.cu_seqlens] == want["cu_seqlens"]
try:
    Client(endpoint, job, rank=5, world_size=2, retries=0)
    raise SystemExit("rank 5 of 2 was accepted")
except ServerError as e:
    assert "rank 5" in str(e), e
print("ok", len(expected))
