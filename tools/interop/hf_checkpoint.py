"""Checkpoints that Hugging Face `transformers` itself writes, for flame-train's
`--checkpoint.initial_load_path` (trainer/tests/train.rs): tiny random models saved with
`save_pretrained`, so `config.json` is exactly what `transformers` writes (its 5.x `rope_parameters`,
Mistral's default `sliding_window`), on the CPU.

    hf_checkpoint.py DIR    writes DIR/mistral/hf (Mistral, grouped-query attention, RoPE base 1e6,
                            sliding_window 4096) and DIR/llama/hf (Llama, tied embeddings, eps 1e-5)

Every weight is drawn anew (seeded), norms included, so that a weight loaded into the wrong place, or
not at all, changes the logits that tools/interop/hf_parity.py compares.
"""

import pathlib
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

SHAPE = dict(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128)


def write(path, model):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.02 if "embed" in name or "lm_head" in name else 0.2
            p.copy_(torch.randn_like(p) * std + (1.0 if name.endswith("norm.weight") else 0.0))
    model.save_pretrained(str(path))
    print(f"{path}: {sum(p.numel() for p in model.parameters())} parameters")


def main():
    root = pathlib.Path(sys.argv[1])
    torch.manual_seed(0)
    mistral = MistralConfig(
        **SHAPE,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    write(root / "mistral" / "hf", MistralForCausalLM(mistral))
    llama = LlamaConfig(**SHAPE, num_attention_heads=4, rms_norm_eps=1e-5, tie_word_embeddings=True)
    write(root / "llama" / "hf", LlamaForCausalLM(llama))


if __name__ == "__main__":
    main()
