"""flame-train's linear-attention models and chunked ops against fla 0.6.0's Triton kernels, on the GPU
machine (tools/gpu/linear.sh). Errors are ‖ours − fla's‖ / ‖fla's‖ over a whole tensor.

    fla_parity.py models DIR     each DIR/<model>/ (written by `linear_parity models`): fla builds the
                                 model from hf/ and computes the logits of the same tokens (two whole
                                 windows; one window of three documents through cu_seqlens) in float32
                                 where fla's kernels allow it and in bfloat16; compared with ours
    fla_parity.py ops-gen DIR    random inputs of GLA, DeltaNet and Gated DeltaNet (B = 1, documents of
                                 uneven length through cu_seqlens), and Gated DeltaNet's layer inputs a, b,
                                 A_log, dt_bias (as fla initialises them) -> DIR/ops_in.safetensors
    fla_parity.py ops-check DIR  fla's outputs and gradients on those inputs, against ours
                                 (DIR/ops_out.safetensors, from `linear_parity ops`). Gated DeltaNet's
                                 backward cannot run in fla on Hopper with Triton 3.6 (fla#640), so it is
                                 checked against fla's pure-PyTorch naive_chunk_gated_delta_rule in float32.
                                 `delta_rule_fla.*` (DeltaNet on fla's kernels launched by flame-train, when
                                 built) against fla's chunk_delta_rule(use_qk_l2norm_in_kernel=True), bf16;
                                 `gla_fla.*` (GLA likewise) against fla's chunk_gla as its layer calls it
                                 (state_v_first=True), bf16;
                                 `gated_delta_rule_fla.*` (Gated DeltaNet on fla's kernels, from q, k, v, a, b,
                                 A_log, dt_bias as fla's layer passes them) against the float32 naive reference
                                 with the layer's math in torch (fla's own backward is refused, fla#640);
                                 the gated norm, short convolution and SwiGLU on fla's kernels against fla's
                                 modules (only these with FLA_PARITY_MODULES_ONLY=1, which fla autotunes in
                                 seconds)
"""

import math
import os
import pathlib
import sys
import warnings

import torch
from safetensors.torch import load_file, save_file

warnings.simplefilter("ignore")
import fla  # noqa: E402,F401  (registers fla's models with the Auto classes)
from transformers import AutoModelForCausalLM  # noqa: E402

DEVICE = "cuda"


# flame's fused residual norms checked on the GPU: (name, width, RMSNorm).
RESIDUAL_NORMS = [("residual_norm_768", 768, False), ("residual_norm_1024", 1024, True)]

def rel(ours, theirs):
    ours, theirs = ours.double().cpu(), theirs.double().cpu()
    return ((ours - theirs).norm() / theirs.norm().clamp_min(1e-30)).item()


def models(root):
    worst = {}
    for case in sorted(p for p in root.iterdir() if (p / "hf").is_dir()):
        ours = load_file(str(case / "logits.safetensors"))
        tokens = ours["tokens"].to(DEVICE)
        cu = ours["cu_seqlens"].to(DEVICE, torch.int32)
        for dtype in (torch.float32, torch.bfloat16):
            model = AutoModelForCausalLM.from_pretrained(str(case / "hf"), torch_dtype=dtype).to(DEVICE).eval()
            try:
                with torch.no_grad():
                    whole = model(tokens).logits.float()
                    packed = model(tokens[:1], cu_seqlens=cu).logits.float()
            except (AssertionError, RuntimeError) as e:  # fla refuses some float32 kernels
                print(f"{case.name} {dtype}: fla refuses ({str(e).splitlines()[0][:90]})")
                continue
            for name, theirs in (("whole", whole), ("packed", packed)):
                for where in ("", "_cuda"):
                    if name + where in ours:
                        err = rel(ours[name + where], theirs)
                        key = f"{case.name} {str(dtype)[6:]} {name}{where or '_cpu'}"
                        worst[key] = err
                        print(f"{key:<42} rel err {err:.2e}")
    return worst


# The gated norm's cases: name, heads, width.
NORMS = (("gated_norm_256", 4, 256), ("gated_norm_512", 6, 512))


def ops_gen(root):
    torch.manual_seed(0)
    # One document of each awkward kind; 1024 tokens, a multiple of 16, so that the launches take the
    # aligned twins of the short convolution and SwiGLU (T and row strides multiples of 16).
    lengths = [1, 64, 200, 7, 129, 623]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int64)
    t = int(cu[-1])
    out = {}

    def normal(*shape):
        return torch.randn(*shape, dtype=torch.float32)

    # Heads and widths of flame's 340M configs, which the kernel build (tools/setup-kernels.sh) has.
    for op, h, dk, dv in (("gla", 4, 128, 256), ("delta_rule", 8, 128, 128), ("gated_delta_rule", 6, 256, 512)):
        q, k, v = normal(1, t, h, dk), normal(1, t, h, dk), normal(1, t, h, dv)
        if op != "gla":
            q, k = (torch.nn.functional.normalize(x, dim=-1) for x in (q, k))
            out[f"{op}.beta"] = torch.rand(1, t, h).bfloat16()
        if op == "gla":
            out[f"{op}.g"] = (torch.nn.functional.logsigmoid(normal(1, t, h, dk)) / 16).bfloat16()
        if op == "gated_delta_rule":
            out[f"{op}.g"] = (-torch.nn.functional.softplus(normal(1, t, h)) * 0.5).bfloat16()
        out[f"{op}.q"], out[f"{op}.k"], out[f"{op}.v"] = q.bfloat16(), k.bfloat16(), v.bfloat16()
        out[f"{op}.do"] = normal(1, t, h, dv).bfloat16()
        out[f"{op}.cu_seqlens"] = cu.clone()
    # Gated DeltaNet's layer inputs (drawn last: the tensors above stay as they were). a = a_proj(x) and
    # b = b_proj(x) raw; A = exp(A_log) uniform in [1, 16] and softplus(dt_bias) log-uniform in [1e-3, 0.1],
    # as fla's GatedDeltaNet initialises them (A from 1 rather than 0, away from log 0).
    h = 6
    out["gated_delta_rule.a"] = normal(1, t, h).bfloat16()
    out["gated_delta_rule.b"] = normal(1, t, h).bfloat16()
    out["gated_delta_rule.A_log"] = torch.empty(h).uniform_(1, 16).log()
    dt = torch.exp(torch.rand(h) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
    out["gated_delta_rule.dt_bias"] = dt + torch.log(-torch.expm1(-dt))
    # The gated output norm (fla's FusedRMSNormGated) at GLA's and Gated DeltaNet's head widths.
    for name, h, d in NORMS:
        out[f"{name}.x"], out[f"{name}.g"] = normal(1, t, h, d).bfloat16(), normal(1, t, h, d).bfloat16()
        out[f"{name}.w"] = 1 + 0.1 * normal(d)
        out[f"{name}.dy"] = normal(1, t, h, d).bfloat16()
    # DeltaNet 340M's short convolution (1024 channels, 4 taps) over the same documents.
    out["short_conv.x"], out["short_conv.dy"] = normal(1, t, 1024).bfloat16(), normal(1, t, 1024).bfloat16()
    out["short_conv.w"] = 0.5 * normal(1024, 4)
    out["short_conv.cu_seqlens"] = cu.clone()
    # The 340M configs' MLP: SwiGLU over 2816 channels and the down projection to 1024.
    out["swiglu.gate"], out["swiglu.up"] = normal(1, t, 2816).bfloat16(), normal(1, t, 2816).bfloat16()
    out["swiglu.w"] = 0.02 * normal(1024, 2816)
    out["swiglu.dout"] = normal(1, t, 1024).bfloat16()
    # The loss over the 340M configs' 32000 classes: bf16 logits, int64 labels with ignored ones (-100),
    # each row's gradient.
    out["cross_entropy.logits"] = (3 * normal(t, 32000)).bfloat16()
    labels = torch.randint(0, 32000, (t,))
    labels[::7] = -100
    out["cross_entropy.labels"] = labels
    out["cross_entropy.dloss"] = torch.rand(t)
    # flame's fused residual norm (tools/kernels/residual_norm.py): GPT-2 small's LayerNorm, the 340M
    # configs' RMSNorm; the branch bf16, the residual stream fp32.
    for name, d, rms in RESIDUAL_NORMS:
        out[f"{name}.x"], out[f"{name}.res"] = normal(t, d).bfloat16(), 3 * normal(t, d)
        out[f"{name}.w"] = 1 + 0.1 * normal(d)
        if not rms:
            out[f"{name}.b"] = 0.1 * normal(d)
        out[f"{name}.dy"], out[f"{name}.dres"] = normal(t, d).bfloat16(), normal(t, d)
    save_file(out, str(root / "ops_in.safetensors"))
    print(f"wrote {len(out)} tensors")


def ops_check(root):
    inputs = load_file(str(root / "ops_in.safetensors"))
    ours = load_file(str(root / "ops_out.safetensors"))
    worst = {}
    if not os.environ.get("FLA_PARITY_MODULES_ONLY"):
        check_chunk_ops(inputs, ours, worst)
    check_modules(inputs, ours, worst)
    return worst


def check_chunk_ops(inputs, ours, worst):
    """The token-mixing ops: libtorch's (`gla.*`, ...) and fla's kernels launched by flame-train
    (`*_fla.*`) against fla."""
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule
    from fla.ops.gla import chunk_gla

    layer_inputs = ("a", "b", "A_log", "dt_bias")  # Gated DeltaNet's, for gated_delta_rule_fla only
    for op in ("gla", "delta_rule", "gated_delta_rule"):
        x = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(op + ".")}
        for name in layer_inputs:
            x.pop(name, None)
        cu = x.pop("cu_seqlens").to(DEVICE, torch.int32)
        d_o = x.pop("do").to(DEVICE)
        if op == "gated_delta_rule":
            # fla's float32 reference, one document at a time (it has no cu_seqlens).
            leaves = {n: t.to(DEVICE).float().requires_grad_() for n, t in x.items()}
            pieces = []
            for i in range(len(cu) - 1):
                a, b = int(cu[i]), int(cu[i + 1])
                s = {n: t[:, a:b] for n, t in leaves.items()}
                o_i, _ = naive_chunk_gated_delta_rule(s["q"], s["k"], s["v"], s["g"], s["beta"], chunk_size=64)
                pieces.append(o_i)
            o = torch.cat(pieces, dim=1)
            (o * d_o.float()).sum().backward()
            precision = "fp32 naive"
        else:
            leaves = {n: t.to(DEVICE).requires_grad_() for n, t in x.items()}
            if op == "gla":
                o, _ = chunk_gla(leaves["q"], leaves["k"], leaves["v"], leaves["g"], cu_seqlens=cu)
            else:
                o, _ = chunk_delta_rule(leaves["q"], leaves["k"], leaves["v"], leaves["beta"], cu_seqlens=cu)
            (o.float() * d_o.float()).sum().backward()
            precision = "bf16 Triton"
        pairs = [("o", o)] + [(f"d{n}", t.grad) for n, t in leaves.items()]
        for name, theirs in pairs:
            err = rel(ours[f"{op}.{name}"], theirs)
            worst[f"{op}.{name}"] = err
            print(f"{op:<17} {name:<5} vs fla {precision:<11} rel err {err:.2e}")
    if "delta_rule_fla.o" in ours:
        x = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("delta_rule.")}
        cu = x.pop("cu_seqlens").to(DEVICE, torch.int32)
        d_o = x.pop("do").to(DEVICE)
        leaves = {n: t.to(DEVICE).requires_grad_() for n, t in x.items()}
        o, _ = chunk_delta_rule(leaves["q"], leaves["k"], leaves["v"], leaves["beta"],
                                use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
        (o.float() * d_o.float()).sum().backward()
        for name, theirs in [("o", o)] + [(f"d{n}", t.grad) for n, t in leaves.items()]:
            err = rel(ours[f"delta_rule_fla.{name}"], theirs)
            worst[f"delta_rule_fla.{name}"] = err
            print(f"{'delta_rule (fla kernels, l2norm)':<34} {name:<5} vs fla bf16 Triton rel err {err:.2e}")
    if "gla_fla.o" in ours:
        x = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("gla.")}
        cu = x.pop("cu_seqlens").to(DEVICE, torch.int32)
        d_o = x.pop("do").to(DEVICE)
        leaves = {n: t.to(DEVICE).requires_grad_() for n, t in x.items()}
        o, _ = chunk_gla(leaves["q"], leaves["k"], leaves["v"], leaves["g"], state_v_first=True, cu_seqlens=cu)
        (o.float() * d_o.float()).sum().backward()
        for name, theirs in [("o", o)] + [(f"d{n}", t.grad) for n, t in leaves.items()]:
            err = rel(ours[f"gla_fla.{name}"], theirs)
            worst[f"gla_fla.{name}"] = err
            print(f"{'gla (fla kernels)':<34} {name:<5} vs fla bf16 Triton rel err {err:.2e}")
    if "gated_delta_rule_fla.o" in ours:
        # fla's GatedDeltaNet layer in torch, float32: l2norm (fla's: x / sqrt(sum x² + 1e-6)) of q and k,
        # beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias); the naive chunked op per document.
        x = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith("gated_delta_rule.")}
        cu = x.pop("cu_seqlens").to(DEVICE, torch.int32)
        d_o = x.pop("do").to(DEVICE)
        names = ("q", "k", "v") + layer_inputs
        leaves = {n: x[n].to(DEVICE).float().requires_grad_() for n in names}

        def l2norm(t):
            return t * torch.rsqrt((t * t).sum(-1, keepdim=True) + 1e-6)

        q, k = l2norm(leaves["q"]), l2norm(leaves["k"])
        beta = torch.sigmoid(leaves["b"])
        g = -leaves["A_log"].exp() * torch.nn.functional.softplus(leaves["a"] + leaves["dt_bias"])
        pieces = []
        for i in range(len(cu) - 1):
            a, b = int(cu[i]), int(cu[i + 1])
            o_i, _ = naive_chunk_gated_delta_rule(q[:, a:b], k[:, a:b], leaves["v"][:, a:b], g[:, a:b],
                                                  beta[:, a:b], chunk_size=64)
            pieces.append(o_i)
        o = torch.cat(pieces, dim=1)
        (o * d_o.float()).sum().backward()
        for name, theirs in [("o", o)] + [(f"d{n}", t.grad) for n, t in leaves.items()]:
            err = rel(ours[f"gated_delta_rule_fla.{name}"], theirs)
            worst[f"gated_delta_rule_fla.{name}"] = err
            print(f"{'gated_delta_rule (fla kernels, layer)':<37} {name:<8} vs fla fp32 naive rel err {err:.2e}")


def check_modules(inputs, ours, worst):
    """The pieces around the mixing on fla's kernels launched by flame-train (the gated norm, the short
    convolution, SwiGLU with the down projection) against fla's modules."""
    for name, _, _ in NORMS:
        if f"{name}.y" not in ours:
            continue
        from fla.modules.norm.fused_norm_gate import rms_norm_gated
        leaves = {n: inputs[f"{name}.{n}"].to(DEVICE).requires_grad_() for n in ("x", "g", "w")}
        y = rms_norm_gated(leaves["x"], leaves["g"], leaves["w"], None, activation="swish", eps=1e-6)
        (y.float() * inputs[f"{name}.dy"].to(DEVICE).float()).sum().backward()
        for part, theirs in [("y", y)] + [(f"d{n}", t.grad) for n, t in leaves.items()]:
            err = rel(ours[f"{name}.{part}"], theirs)
            worst[f"{name}.{part}"] = err
            print(f"{name + ' (fla kernels)':<34} {part:<5} vs fla bf16 Triton rel err {err:.2e}")
    if "short_conv.y" in ours:
        from fla.modules.causal_conv1d.ops import causal_conv1d
        cu = inputs["short_conv.cu_seqlens"].to(DEVICE, torch.int32)
        leaves = {n: inputs[f"short_conv.{n}"].to(DEVICE).requires_grad_() for n in ("x", "w")}
        y, _ = causal_conv1d(leaves["x"], weight=leaves["w"], activation="silu", backend="triton", cu_seqlens=cu)
        (y.float() * inputs["short_conv.dy"].to(DEVICE).float()).sum().backward()
        for part, theirs in [("y", y)] + [(f"d{n}", t.grad) for n, t in leaves.items()]:
            err = rel(ours[f"short_conv.{part}"], theirs)
            worst[f"short_conv.{part}"] = err
            print(f"{'short_conv (fla kernels)':<34} {part:<5} vs fla bf16 Triton rel err {err:.2e}")
    # FLA_PARITY_SKIP=swiglu leaves fla's SwiGLU out (its autotuning has outlasted a device call).
    if "swiglu.out" in ours and "swiglu" not in os.environ.get("FLA_PARITY_SKIP", "").split(","):
        from fla.modules.activations import swiglu_linear
        leaves = {n: inputs[f"swiglu.{n}"].to(DEVICE).requires_grad_() for n in ("gate", "up", "w")}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = swiglu_linear(leaves["gate"], leaves["up"], leaves["w"], None)
        (out.float() * inputs["swiglu.dout"].to(DEVICE).float()).sum().backward()
        for part, theirs in [("out", out)] + [(f"d{n}", t.grad) for n, t in leaves.items()]:
            err = rel(ours[f"swiglu.{part}"], theirs)
            worst[f"swiglu.{part}"] = err
            print(f"{'swiglu_linear (fla kernels)':<34} {part:<5} vs fla bf16 Triton rel err {err:.2e}")
    for name, d, rms in RESIDUAL_NORMS:
        if f"{name}.y" not in ours:
            continue
        # The exact function: torch's add and norm in float32 on the same inputs.
        x = {n: inputs[f"{name}.{n}"].to(DEVICE) for n in ("x", "res", "w", "b", "dy", "dres") if f"{name}.{n}" in inputs}
        leaves = {n: x[n].float().requires_grad_() for n in ("x", "res", "w", "b") if n in x}
        h = leaves["res"] + leaves["x"]
        if rms:
            y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * leaves["w"]
        else:
            y = torch.nn.functional.layer_norm(h, (d,), leaves["w"], leaves["b"], 1e-5)
        ((y * x["dy"].float()).sum() + (h * x["dres"]).sum()).backward()
        for part, exact in [("y", y), ("h", h)] + [(f"d{n}", t.grad) for n, t in leaves.items()]:
            err = rel(ours[f"{name}.{part}"], exact)
            worst[f"{name}.{part}"] = err
            print(f"{name + ' (flame kernel)':<34} {part:<7} vs torch fp32 rel err {err:.2e}")
    if "cross_entropy.loss" in ours:
        # The exact function: torch's cross-entropy in float32 on the same bf16 logits; and fla's own.
        from fla.modules.fused_cross_entropy.ops import cross_entropy_bwd, cross_entropy_fwd
        logits = inputs["cross_entropy.logits"].to(DEVICE)
        labels, dloss = inputs["cross_entropy.labels"].to(DEVICE), inputs["cross_entropy.dloss"].to(DEVICE)
        leaf = logits.float().requires_grad_()
        loss = torch.nn.functional.cross_entropy(leaf, labels, reduction="none", ignore_index=-100)
        (loss * dloss).sum().backward()
        fla_loss, _, lse, _, _ = cross_entropy_fwd(logits, labels)
        fla_grad = cross_entropy_bwd(logits.clone(), labels, lse, dloss, inplace_backward=True)
        for part, exact, fla_part in [("loss", loss, fla_loss), ("dlogits", leaf.grad, fla_grad)]:
            err, err_fla = rel(ours[f"cross_entropy.{part}"], exact), rel(ours[f"cross_entropy.{part}"], fla_part)
            worst[f"cross_entropy.{part}"] = err
            print(f"{'cross_entropy (fla kernels)':<34} {part:<7} vs torch fp32 rel err {err:.2e}, "
                  f"vs fla's own launch {err_fla:.2e}")


if __name__ == "__main__":
    verb, root = sys.argv[1], pathlib.Path(sys.argv[2])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print("fla", fla.__version__, "torch", torch.__version__, gpu)
    {"models": models, "ops-gen": ops_gen, "ops-check": ops_check}[verb](root)
