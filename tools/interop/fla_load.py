"""flame-train's checkpoints of fla's linear-attention models against fla 0.6.0 itself, on the CPU
(trainer/tests/linear.rs): fla's kernels need a GPU, building its models and loading weights do not.

    fla_load.py check DIR...   each DIR holds a Hugging Face export (config.json, model.safetensors):
                               fla's AutoModelForCausalLM (after `import fla`) is built from the config
                               and loads the weights with strict=True; prints each model's parameter count
    fla_load.py write DIR      builds fla's model from DIR/config.json with fla's own initialisation and
                               writes its state dict to DIR/fla.safetensors (for flame-train to load)
"""

import pathlib
import sys
import warnings

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # fla warns that Triton falls back to the CPU
    import fla  # noqa: F401  (registers gla, delta_net, gated_deltanet with the Auto classes)


def build(directory):
    config = AutoConfig.from_pretrained(str(directory))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)


def check(directory):
    model = build(directory)
    weights = load_file(str(directory / "model.safetensors"))
    # Strict (a shape that differs raises too), but for the output layer of a tied model: it is the
    # embedding, saved once.
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise SystemExit(f"{directory}: missing {missing}, unexpected {unexpected}")
    params = sum(p.numel() for p in model.parameters())
    print(f"{directory.name}: {type(model).__name__} loads strictly, {params} parameters")


def write(directory):
    model = build(directory)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / "fla.safetensors"))
    print(f"{directory.name}: wrote {len(state)} tensors")


if __name__ == "__main__":
    verb, dirs = sys.argv[1], [pathlib.Path(d) for d in sys.argv[2:]]
    if verb not in ("check", "write") or not dirs:
        raise SystemExit(__doc__)
    for d in dirs:
        (check if verb == "check" else write)(d)
    print("ok")
