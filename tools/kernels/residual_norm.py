"""flame's own fused residual add and norm, written in Triton and compiled by this build beside fla's kernels
(flame-train's trainer/src/kernels/fla/residual_norm.rs launches them as forward() and backward() below do).

A pre-norm block's residual stream is float32 under autocast and each branch (attention, MLP) ends in a bf16
matmul. Unfused, `h = residual + branch` is one kernel, the norm of `h` another (in float32), and the bf16
copy that the next matmul reads a third; the backward pass has as many again. Here the forward pass is one
kernel per row: `h = residual + branch` (float32, kept for the backward pass and as the next residual), then
LayerNorm (mean and variance, weight and bias: GPT-2's) or RMSNorm (weight: Llama's and fla's) of `h`, written
once in the branch's dtype. The backward pass is one kernel over ROWS rows per program: the gradient of `h`
from the norm's output gradient plus the gradient arriving at `h` from later layers, written in float32 (the
residual's) and in the branch's dtype, and each program's partial sums of the weight's and bias's gradients,
which the caller sums. Gradients are accumulated in float32 and never rounded on the residual path (fla's
row kernel for widths over 512 rounds the residual's gradient to bf16).

Importing this module needs Triton only; forward() and backward() take torch tensors (or the tracer's
shape-only ones). Checked against torch on the CPU by tools/kernels/check/residual_norm_interpret.py (Triton's
interpreter) and against torch on a GPU by tools/interop/fla_parity.py."""
import triton
import triton.language as tl

# Rows per program of the backward kernel: T/ROWS programs each sum their rows' weight gradient.
ROWS = 16


def num_warps(block):
    """Warps for a row of `block` (a power of two) elements: 4 up to 1024, then one more warp per 256."""
    return max(4, min(16, block // 256))


@triton.jit
def residual_norm_fwd_kernel(
    x,  # [T, D] the branch (bf16)
    res,  # [T, D] the residual stream (fp32)
    w,  # [D]
    b,  # [D] (HAS_BIAS)
    y,  # [T, D] the norm's output, x's dtype
    res_out,  # [T, D] fp32: h = res + x
    mean,  # [T] fp32 (not IS_RMS_NORM)
    rstd,  # [T] fp32
    eps,
    D: tl.constexpr,
    BD: tl.constexpr,
    IS_RMS_NORM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    b_h = tl.load(x + i_t * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_h += tl.load(res + i_t * D + o_d, mask=m_d, other=0.0).to(tl.float32)
    tl.store(res_out + i_t * D + o_d, b_h, mask=m_d)
    if IS_RMS_NORM:
        b_c = b_h
    else:
        b_mean = tl.sum(b_h, axis=0) / D
        tl.store(mean + i_t, b_mean)
        b_c = tl.where(m_d, b_h - b_mean, 0.0)
    b_rstd = 1 / tl.sqrt(tl.sum(b_c * b_c, axis=0) / D + eps)
    tl.store(rstd + i_t, b_rstd)
    b_y = b_c * b_rstd * tl.load(w + o_d, mask=m_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b_y += tl.load(b + o_d, mask=m_d, other=0.0).to(tl.float32)
    tl.store(y + i_t * D + o_d, b_y.to(y.dtype.element_ty), mask=m_d)


@triton.jit(do_not_specialize=["T"])
def residual_norm_bwd_kernel(
    h,  # [T, D] fp32, the forward pass's res_out
    w,  # [D]
    dy,  # [T, D] the output's gradient
    dres,  # [T, D] fp32: the gradient arriving at h (res_out's)
    dx,  # [T, D] h's gradient in the branch's dtype
    dres_in,  # [T, D] fp32: h's gradient for the residual
    dw,  # [programs, D] fp32 partial sums
    db,  # [programs, D] fp32 partial sums (HAS_BIAS)
    mean,
    rstd,
    T,
    D: tl.constexpr,
    BD: tl.constexpr,
    ROWS: tl.constexpr,
    IS_RMS_NORM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    i_p = tl.program_id(0).to(tl.int64)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    b_w = tl.load(w + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_dw = tl.zeros([BD], dtype=tl.float32)
    b_db = tl.zeros([BD], dtype=tl.float32)
    for i_r in range(ROWS):
        i_t = i_p * ROWS + i_r
        m_t = i_t < T
        m_x = m_d & m_t
        b_h = tl.load(h + i_t * D + o_d, mask=m_x, other=0.0)
        b_dy = tl.load(dy + i_t * D + o_d, mask=m_x, other=0.0).to(tl.float32)
        b_rstd = tl.load(rstd + i_t, mask=m_t, other=0.0)
        if IS_RMS_NORM:
            b_xhat = b_h * b_rstd
        else:
            b_xhat = tl.where(m_d, (b_h - tl.load(mean + i_t, mask=m_t, other=0.0)) * b_rstd, 0.0)
        b_wdy = b_dy * b_w
        b_dw += b_dy * b_xhat
        if HAS_BIAS:
            b_db += b_dy
        b_c1 = tl.sum(b_xhat * b_wdy, axis=0) / D
        if IS_RMS_NORM:
            b_dh = (b_wdy - b_xhat * b_c1) * b_rstd
        else:
            b_dh = (b_wdy - b_xhat * b_c1 - tl.sum(b_wdy, axis=0) / D) * b_rstd
        b_dh += tl.load(dres + i_t * D + o_d, mask=m_x, other=0.0)
        tl.store(dres_in + i_t * D + o_d, b_dh, mask=m_x)
        tl.store(dx + i_t * D + o_d, b_dh.to(dx.dtype.element_ty), mask=m_x)
    tl.store(dw + i_p * D + o_d, b_dw, mask=m_d)
    if HAS_BIAS:
        tl.store(db + i_p * D + o_d, b_db, mask=m_d)


def forward(torch, x, res, w, b, eps, rms):
    """(y, h, mean, rstd) for the branch x and residual res ([T, D] each), as flame-train launches them.
    `torch` is the torch module (or the tracer's stub)."""
    T, D = x.shape
    BD = triton.next_power_of_2(D)
    y = torch.empty_like(x)
    h = torch.empty_like(res, dtype=torch.float32)
    mean = None if rms else torch.empty((T,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((T,), dtype=torch.float32, device=x.device)
    residual_norm_fwd_kernel[(T,)](x, res, w, b, y, h, mean, rstd, eps, D=D, BD=BD, IS_RMS_NORM=rms,
                                   HAS_BIAS=b is not None, num_warps=num_warps(BD))
    return y, h, mean, rstd


def backward(torch, dy, dres, h, w, b, mean, rstd, x_dtype):
    """(dx, dres_in, dw partial sums, db partial sums) as flame-train launches them; the caller sums the
    partial sums over their first dimension."""
    T, D = h.shape
    BD = triton.next_power_of_2(D)
    programs = triton.cdiv(T, ROWS)
    dx = torch.empty((T, D), dtype=x_dtype, device=h.device)
    dres_in = torch.empty_like(h)
    dw = torch.empty((programs, D), dtype=torch.float32, device=h.device)
    db = None if b is None else torch.empty((programs, D), dtype=torch.float32, device=h.device)
    residual_norm_bwd_kernel[(programs,)](h, w, dy, dres, dx, dres_in, dw, db, mean, rstd, T, D=D, BD=BD,
                                          ROWS=ROWS, IS_RMS_NORM=mean is None, HAS_BIAS=b is not None,
                                          num_warps=num_warps(BD))
    return dx, dres_in, dw, db
