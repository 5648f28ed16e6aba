"""Run by streamer/tests/raw_text.rs: the Python client's resume cursors against a live flame-stream.

Usage: check_cursors.py ENDPOINT JOB.toml STEP [GIVEN.json]
Prints, as JSON, the cursors the server gives to resume the job at STEP, after handing it GIVEN's (a list
of cursor tuples, as `resume_cursors` returns them).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from flame_stream import resume_cursors  # noqa: E402

endpoint, job_path, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
given = [tuple(c) for c in json.load(open(sys.argv[4]))] if len(sys.argv) > 4 else []
print(json.dumps([list(c) for c in resume_cursors(endpoint, open(job_path).read(), step, given, retries=0)]))
