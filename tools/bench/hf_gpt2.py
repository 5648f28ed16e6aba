"""The peer of flame-train's GPT-2 benchmark (tools/bench/gpt2.sh): `transformers`' own
`GPT2LMHeadModel` built from the same config file (SDPA attention), trained the way flame-train trains
(bf16 autocast, fused AdamW with betas 0.9/0.95 and weight decay 0.1, gradient clipping at 1.0, the loss
`transformers` computes from `labels`), eager or under `torch.compile` (the whole model), on batch ×
seq_len random tokens.

Usage: hf_gpt2.py CONFIG.json [--batch 16] [--seq-len 1024] [--steps 30] [--compile]
Prints one JSON line: tokens/s over the steps after a warm-up, and TFLOP/s by flame-train's count for
GPT-2, 6·(parameters − embeddings + hidden·vocab) + 12·layers·hidden·seq_len per token.
"""

import argparse
import json
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    config = GPT2Config.from_dict(json.load(open(args.config)))
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = GPT2LMHeadModel(config).cuda().train()
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), device="cuda")
    warmup = 5
    for step in range(args.steps + warmup):
        if step == warmup:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tps = args.steps * args.batch * args.seq_len / elapsed
    h, v, layers = config.n_embd, config.vocab_size, config.n_layer
    params = sum(p.numel() for p in model.parameters())
    embeddings = (v + config.n_positions) * h
    flops = 6 * (params - embeddings + h * v) + 12 * layers * h * args.seq_len
    print(json.dumps({"peer": "transformers compiled" if args.compile else "transformers eager",
                      "tokens_per_s": tps, "tflops": tps * flops / 1e12, "params": params,
                      "memory_gib": torch.cuda.max_memory_allocated() / 2**30,
                      "torch": torch.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
