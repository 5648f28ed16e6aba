"""Run by streamer/tests/raw_text.rs: the Python client waiting for a raw dataset's preparation.

Usage: check_preparing.py ENDPOINT JOB.toml
Connects (the server is still preparing the job's dataset), logs the server's progress to stderr through
the `flame_stream` logger (the test reads it there), then prints the first micro-batch's tokens as JSON.
"""

import json
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from flame_stream import Client  # noqa: E402

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s: %(message)s")
endpoint, job_path = sys.argv[1], sys.argv[2]
client = Client(endpoint, open(job_path).read(), rank=0, world_size=1, retries=0)
print(json.dumps(client.micro_batch(0, 0).tokens.tolist()))
