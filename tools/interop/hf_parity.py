"""The trainer's transformer against Hugging Face `transformers` (run by tools/gpu/trainer-smoke.sh where
torch is installed): loads each export that `trainer/examples/parity.rs` wrote with
`AutoModelForCausalLM.from_pretrained` and compares its fp32 logits with flame-train's, on whole windows
and on a window of two packed documents (each document run alone through transformers, positions from
0). Exits non-zero if any logit differs by 1e-4 or more.

Usage: hf_parity.py DIR   (DIR holds gqa/ and tied/, each with hf/ and logits.safetensors)
"""

import pathlib
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

worst = 0.0
for case in sorted(pathlib.Path(sys.argv[1]).iterdir()):
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
if worst >= 1e-4:
    raise SystemExit(f"logits differ by {worst:.2e}")
print("ok")
