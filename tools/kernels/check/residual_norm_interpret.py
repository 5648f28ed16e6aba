"""tools/kernels/residual_norm.py's kernels run by Triton's interpreter on the CPU (no GPU), against torch's
float32 autograd of the same function: `h = residual + branch`, `y = norm(h)` (LayerNorm with weight and
bias, or RMSNorm with weight) in the branch's dtype; gradients for dy and a gradient arriving at h. Run it
with a Python that has torch and Triton (the project venv, tools/setup-python.sh):

  residual_norm_interpret.py        prints each case's largest errors; exits 1 if one is over tolerance

Widths 768 (GPT-2 small, not a power of two) and 256, rows not a multiple of the backward's ROWS; bf16 and
float32 branches. Tolerance: 1e-5 relative for float32 outputs and gradients; the bf16 outputs within one
bf16 rounding (2^-8 relative)."""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import residual_norm  # noqa: E402


def reference(x, res, w, b, eps, rms, dy, dres):
    leaves = [t.detach().clone().float().requires_grad_() for t in (x, res, w)]
    bias = None if b is None else b.detach().clone().float().requires_grad_()
    xf, rf, wf = leaves
    h = rf + xf
    if rms:
        y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * wf
    else:
        y = torch.nn.functional.layer_norm(h, (h.shape[-1],), wf, bias, eps)
    (y * dy.float()).sum().backward(retain_graph=True)
    (h * dres).sum().backward()
    grads = {"dx": xf.grad, "dres": rf.grad, "dw": wf.grad}
    if bias is not None:
        grads["db"] = bias.grad
    return y.detach(), h.detach(), grads


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def case(T, D, rms, dtype):
    g = torch.Generator().manual_seed(D + T)
    x = torch.randn(T, D, generator=g).to(dtype)
    res = 3 * torch.randn(T, D, generator=g) + 0.5
    w = 1 + 0.1 * torch.randn(D, generator=g)
    b = None if rms else 0.1 * torch.randn(D, generator=g)
    dy = torch.randn(T, D, generator=g).to(dtype)
    dres = torch.randn(T, D, generator=g)
    eps = 1e-5
    y, h, mean, rstd = residual_norm.forward(torch, x, res, w, b, eps, rms)
    dx, dres_in, dw, db = residual_norm.backward(torch, dy, dres, h, w, b, mean, rstd, x.dtype)
    ry, rh, grads = reference(x, res, w, b, eps, rms, dy, dres)
    out_tol = 2.0 ** -8 if dtype == torch.bfloat16 else 1e-5
    errors = {"y": (rel(y.float(), ry), out_tol), "h": (rel(h, rh), 1e-6),
              "dres": (rel(dres_in, grads["dres"]), 1e-5), "dx": (rel(dx.float(), grads["dx"]), out_tol),
              "dw": (rel(dw.sum(0), grads["dw"]), 1e-5)}
    if db is not None:
        errors["db"] = (rel(db.sum(0), grads["db"]), 1e-5)
    bad = {k: e for k, (e, tol) in errors.items() if not e <= tol}
    name = f"T={T} D={D} {'rms' if rms else 'layer'} {str(dtype).removeprefix('torch.')}"
    print(f"{name:<28} " + "  ".join(f"{k} {e:.1e}" for k, (e, _) in errors.items()) + ("  OVER" if bad else ""))
    return not bad


def main():
    ok = all([case(T, D, rms, dtype) for T, D in [(37, 768), (20, 256)] for rms in (False, True)
              for dtype in (torch.bfloat16, torch.float32)])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
