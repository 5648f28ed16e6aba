"""The peer of flame-train's benchmark (tools/bench/train.sh): the same transformer in plain PyTorch,
trained the way flame trains it (bf16 autocast, fused AdamW with betas 0.9/0.95 and weight decay 0.1,
gradient clipping at 1.0), eager and under torch.compile, on batch × seq_len random tokens.

Usage: torch_reference.py CONFIG.json [--batch 8] [--seq-len 2048] [--steps 30] [--compile]
Prints one JSON line: tokens/s over the steps after a warm-up, and the TFLOP/s by flame's count.
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, h, heads, kv_heads, inter, eps):
        super().__init__()
        self.heads, self.kv_heads, self.d, self.eps = heads, kv_heads, h // heads, eps
        self.input_norm = nn.Parameter(torch.ones(h))
        self.post_norm = nn.Parameter(torch.ones(h))
        self.q = nn.Linear(h, h, bias=False)
        self.k = nn.Linear(h, kv_heads * self.d, bias=False)
        self.v = nn.Linear(h, kv_heads * self.d, bias=False)
        self.o = nn.Linear(h, h, bias=False)
        self.gate = nn.Linear(h, inter, bias=False)
        self.up = nn.Linear(h, inter, bias=False)
        self.down = nn.Linear(inter, h, bias=False)

    def norm(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        hx = self.norm(x, self.input_norm)
        q = self.q(hx).view(b, t, self.heads, self.d).transpose(1, 2)
        k = self.k(hx).view(b, t, self.kv_heads, self.d).transpose(1, 2)
        v = self.v(hx).view(b, t, self.kv_heads, self.d).transpose(1, 2)

        def rope(z):
            z1, z2 = z[..., : self.d // 2], z[..., self.d // 2:]
            return z * cos.to(z.dtype) + torch.cat([-z2, z1], -1) * sin.to(z.dtype)

        q, k = rope(q), rope(k)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, 1)
            v = v.repeat_interleave(self.heads // self.kv_heads, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + self.o(y)
        hx = self.norm(x, self.post_norm)
        return x + self.down(F.silu(self.gate(hx)) * self.up(hx))


class Transformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, heads = c["hidden_size"], c["num_heads"]
        kv = c.get("num_kv_heads") or heads
        inter = c.get("intermediate_size") or 256 * math.ceil(int(h * c.get("hidden_ratio", 4) * 2 / 3) / 256)
        self.eps, self.d = c.get("norm_eps", 1e-6), h // heads
        self.theta = c.get("rope_theta", 10000.0)
        self.embed = nn.Embedding(c.get("vocab_size", 32000), h)
        self.blocks = nn.ModuleList(Block(h, heads, kv, inter, self.eps) for _ in range(c["num_hidden_layers"]))
        self.norm = nn.Parameter(torch.ones(h))
        self.head = nn.Linear(h, c.get("vocab_size", 32000), bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=c.get("initializer_range", 0.02))

    def forward(self, tokens):
        t = tokens.shape[1]
        inv = 1.0 / (self.theta ** (torch.arange(0, self.d, 2, device=tokens.device).float() / self.d))
        freqs = torch.arange(t, device=tokens.device).float()[:, None] * inv
        angles = torch.cat([freqs, freqs], -1)
        cos, sin = angles.cos(), angles.sin()
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        xf = x.float()
        x = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.norm
        return self.head(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    config = json.load(open(args.config))
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = Transformer(config).cuda()
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    vocab = config.get("vocab_size", 32000)
    tokens = torch.randint(0, vocab, (args.batch, args.seq_len), device="cuda")
    warmup = 5
    for step in range(args.steps + warmup):
        if step == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = step_model(tokens)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), tokens[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tps = args.steps * args.batch * args.seq_len / elapsed
    params = sum(p.numel() for p in model.parameters())
    flops = 6 * (params - model.embed.weight.numel()) + 12 * len(model.blocks) * config["hidden_size"] * args.seq_len
    print(json.dumps({"peer": "torch.compile" if args.compile else "eager", "tokens_per_s": tps,
                      "tflops": tps * flops / 1e12, "params": params, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
