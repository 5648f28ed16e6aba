"""fla 0.6.0's own pure-PyTorch references for the linear mixers (fla/ops/*/naive.py:
naive_recurrent_gla, delta_rule_recurrence, naive_recurrent_gated_delta_rule), on the CPU in float64:
the oracle of trainer/tests/linear.rs for flame-train's chunked ops.

    fla_naive.py IN OUT   IN (safetensors): per op (`gla`, `delta_rule`, `gated_delta_rule`) its q, k, v,
                          gates (g, beta), the output's gradient `do` and `cu_seqlens`, [1, T, H, D] like
                          fla; OUT: each op's output and its inputs' gradients, one document at a time
                          (fla's naive functions know no cu_seqlens; the state starts at zero in each)
"""

import sys
import warnings

import torch
from safetensors.torch import load_file, save_file

warnings.simplefilter("ignore")
from fla.ops.delta_rule.naive import delta_rule_recurrence  # noqa: E402
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule  # noqa: E402
from fla.ops.gla.naive import naive_recurrent_gla  # noqa: E402


def head_first(x):
    return x.transpose(1, 2)


def run(op, s):
    if op == "gla":
        return naive_recurrent_gla(s["q"], s["k"], s["v"], s["g"])[0]
    if op == "delta_rule":  # head-first: [B, H, T, D]
        o, _ = delta_rule_recurrence(*(head_first(s[n]) for n in ("q", "k", "v", "beta")))
        return head_first(o)
    return naive_recurrent_gated_delta_rule(s["q"], s["k"], s["v"], s["beta"], s["g"])[0]


def main(path_in, path_out):
    inputs = load_file(path_in)
    out = {}
    for op in ("gla", "delta_rule", "gated_delta_rule"):
        x = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(op + ".")}
        if not x:
            continue
        cu, d_o = x.pop("cu_seqlens").tolist(), x.pop("do").double()
        leaves = {n: t.double().requires_grad_() for n, t in x.items()}
        pieces = [run(op, {n: t[:, a:b] for n, t in leaves.items()}) for a, b in zip(cu, cu[1:]) if b > a]
        o = torch.cat(pieces, dim=1)
        (o * d_o).sum().backward()
        out[f"{op}.o"] = o.detach().contiguous()
        out.update({f"{op}.d{n}": t.grad.contiguous() for n, t in leaves.items()})
    save_file(out, path_out)
    print("ok")


if __name__ == "__main__":
    main(*sys.argv[1:3])
