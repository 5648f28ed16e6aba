"""The trainer's transformer against Hugging Face `transformers` on the CPU (trainer/tests/train.rs, in
every test run, and tools/gpu/trainer-smoke.sh): loads each case's export with
`AutoModelForCausalLM.from_pretrained` and compares its fp32 logits with flame-train's (written by
`flame_trainer::parity::write_logits`), on whole windows and on a window of two packed documents (each
document run alone through transformers, positions from 0). Exits non-zero if any logit differs by the
tolerance (1e-4 unless given) or more.

Usage: hf_parity.py [--tolerance T] DIR...   (each DIR is a case, with hf/ and logits.safetensors, or holds cases, as
the output of trainer/examples/parity.rs holds gqa/ and tied/)
"""

import pathlib
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

worst = 0.0
args = sys.argv[1:]
tolerance = 1e-4
if args[:1] == ["--tolerance"]:
    tolerance, args = float(args[1]), args[2:]
cases = []
for arg in map(pathlib.Path, args):
    cases += [arg] if (arg / "hf").is_dir() else sorted(p for p in arg.iterdir() if (p / "hf").is_dir())
if not cases:
    raise SystemExit(f"no case (a directory with hf/ and logits.safetensors) in {sys.argv[1:]}")
for case in cases:
    ours = load_file(str(case / "logits.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(case / "hf"), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        whole = model(ours["tokens"]).logits
        first = ours["tokens"][:1, :10]
        second = ours["tokens"][:1, 10:24]
        packed = torch.cat([model(first).logits, model(second).logits], dim=1)
    d_whole = (whole - ours["whole"]).abs().max().item()
    d_packed = (packed - ours["packed"]).abs().max().item()
    print(f"{case.name}: max |logit difference| whole {d_whole:.2e}, packed documents {d_packed:.2e}")
    worst = max(worst, d_whole, d_packed)
print("transformers", __import__("transformers").__version__, "torch", torch.__version__)
if worst >= tolerance:
    raise SystemExit(f"logits differ by {worst:.2e}")
print("ok")
