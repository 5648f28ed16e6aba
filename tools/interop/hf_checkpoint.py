"""Checkpoints that Hugging Face `transformers` itself writes, for flame-train's
`--checkpoint.initial_load_path` (trainer/tests/train.rs): tiny random models saved with
`save_pretrained`, so `config.json` is exactly what `transformers` writes (its 5.x `rope_parameters`,
Mistral's default `sliding_window`), on the CPU.

    hf_checkpoint.py DIR    writes DIR/mistral/hf (Mistral, grouped-query attention, RoPE base 1e6,
                            sliding_window 4096), DIR/llama/hf (Llama, tied embeddings, eps 1e-5) and
                            DIR/gpt2/hf (GPT-2 without dropout, 128 positions, exact GELU)

Every weight is drawn anew (seeded), norms and biases included, so that a weight loaded into the wrong place, or
not at all, changes the logits that tools/interop/hf_parity.py compares.
"""

import pathlib
import sys

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

SHAPE = dict(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128)


def write(path, model):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.02 if any(e in name for e in ("embed", "lm_head", "wte", "wpe")) else 0.2
            norm = name.endswith("norm.weight") or ".ln_" in name and name.endswith(".weight")
            p.copy_(torch.randn_like(p) * std + (1.0 if norm else 0.0))
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
    gpt2 = GPT2Config(
        vocab_size=1000,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=999,
        eos_token_id=999,
    )
    write(root / "gpt2" / "hf", GPT2LMHeadModel(gpt2))


if __name__ == "__main__":
    main()
