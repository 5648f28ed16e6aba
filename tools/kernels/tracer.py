"""Run fla-core's own chunk ops, forward and backward, on shape-only fake tensors and record every Triton
kernel launch they make (the kernel object, its call arguments, the phase). Nothing is computed: a
FakeTensor has a shape, a dtype and a 256-byte-aligned fake address; the torch functions fla's wrappers
call allocate fake tensors, and `kernel[grid](...)` records instead of launching.

Importing this module installs hopper's fakes (stub torch, fake H100 driver); then call gla(), delta_net() or
gated_deltanet(). Only the variable-length form is traced (B = 1, cu_seqlens given): that is how
flame-train calls the kernels."""
import math
import sys
import types
from dataclasses import dataclass

import hopper  # noqa: F401  (must come first: stub torch, fake driver)

hopper.install()

import torch  # noqa: E402  (the stub)
from triton.runtime.jit import KernelInterface  # noqa: E402


class FakeTensor(torch.Tensor):
    """A contiguous tensor with a shape, a dtype and an address; no data."""
    _next_address = 1 << 20

    def __init__(self, shape, dtype, name=None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.device = types.SimpleNamespace(type="cuda", index=0)
        self.name = name
        self.requires_grad = False
        self.item_value = None  # what .item() of an element returns (chunk_offsets[-1].item())
        self._address = FakeTensor._next_address
        size = max(1, math.prod(self.shape)) * dtype.itemsize
        FakeTensor._next_address += (size + 255) // 256 * 256

    def __repr__(self):
        return f"FakeTensor({list(self.shape)}, {self.dtype})"

    def data_ptr(self):
        return self._address

    def dim(self):
        return len(self.shape)

    @property
    def ndim(self):
        return len(self.shape)

    def size(self, i=None):
        return self.shape if i is None else self.shape[i]

    def numel(self):
        return math.prod(self.shape)

    def element_size(self):
        return self.dtype.itemsize

    def stride(self, i=None):
        strides, acc = [], 1
        for s in reversed(self.shape):
            strides.append(acc)
            acc *= s
        strides = tuple(reversed(strides))
        return strides if i is None else strides[i]

    def is_contiguous(self, *args, **kwargs):
        return True

    def contiguous(self, *args, **kwargs):
        return self

    def __len__(self):
        return self.shape[0]

    def get_device(self):
        return 0

    def view(self, *shape):
        shape = _shape(shape)
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.numel() // known if s == -1 else s for s in shape)
        view = FakeTensor(shape, self.dtype)
        view._address = self._address
        return view

    reshape = view

    def view_as(self, other):
        return self.view(other.shape)

    def new_empty(self, *shape, dtype=None, **kwargs):
        return FakeTensor(_shape(shape), dtype or self.dtype)

    new_zeros = new_empty

    def to(self, *args, **kwargs):
        target = kwargs.get("dtype") or (args[0] if args else None)
        if isinstance(target, FakeTensor):
            target = target.dtype
        if isinstance(target, torch.dtype) and target is not self.dtype:
            return FakeTensor(self.shape, target)
        return self

    def type_as(self, other):
        return self.to(other.dtype)

    def float(self):
        return self.to(torch.float32)

    def sum(self, dim, *args, **kwargs):
        shape = list(self.shape)
        shape.pop(dim)
        return FakeTensor(shape, kwargs.get("dtype") or self.dtype)

    def add_(self, other):
        return self

    def __getitem__(self, index):
        element = FakeTensor((), self.dtype)
        element.item_value = self.item_value
        return element

    def item(self):
        return self.item_value

    def __mul__(self, other):
        return FakeTensor(self.shape, self.dtype)

    __rmul__ = __mul__


def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


def _like(x, dtype=None, **kwargs):
    return FakeTensor(x.shape, (dtype.dtype if isinstance(dtype, FakeTensor) else dtype) or x.dtype)


def _empty(*shape, dtype=None, **kwargs):
    return FakeTensor(_shape(shape), dtype or torch.float32)


torch.empty_like = torch.zeros_like = _like
torch.empty = torch.zeros = _empty
torch.is_tensor = lambda x: isinstance(x, FakeTensor)
torch.is_grad_enabled = lambda: True


class _Ctx:
    needs_input_grad = (True,) * 32

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *args):
        pass

    def set_materialize_grads(self, *args):
        pass


class _Function:
    """torch.autograd.Function: apply() runs forward and keeps (class, ctx) for the backward."""
    last = None

    @classmethod
    def apply(cls, *args):
        ctx = _Ctx()
        out = cls.forward(ctx, *args)
        _Function.last = (cls, ctx)
        return out


torch.autograd.Function = _Function
sys.modules["torch.autograd"].Function = _Function


# --- launches
@dataclass
class Launch:
    kernel: object  # the outermost KernelInterface (Heuristics, Autotuner or JITFunction)
    args: tuple
    kwargs: dict
    phase: str  # 'forward' | 'backward'


LAUNCHES = []
_phase = ["forward"]


def _record_launch(self, grid):
    def launch(*args, **kwargs):
        LAUNCHES.append(Launch(self, args, dict(kwargs), _phase[0]))
    return launch


KernelInterface.__getitem__ = _record_launch

# Import the ops only now: their autograd Functions must subclass _Function.
import fla.ops.delta_rule.chunk  # noqa: E402
import fla.ops.gated_delta_rule.chunk  # noqa: E402
import fla.ops.gla.chunk  # noqa: E402
import fla.modules.activations.ops  # noqa: E402
import fla.modules.causal_conv1d.ops  # noqa: E402
import fla.modules.fused_cross_entropy.ops  # noqa: E402
import residual_norm as _residual_norm  # noqa: E402  (flame's own kernels)
import fla.modules.norm.fused_norm_gate  # noqa: E402

_SEQUENCES = {}  # id(cu_seqlens) -> document lengths


def _prepare_chunk_indices(cu_seqlens, chunk_size, cu_seqlens_cpu=None):
    """Shape-only fla.ops.utils.index.prepare_chunk_indices: [NT, 2], cu_seqlens' dtype."""
    nt = sum(-(-n // chunk_size) for n in _SEQUENCES[id(cu_seqlens)])
    return FakeTensor((nt, 2), cu_seqlens.dtype, name="chunk_indices")


def _prepare_chunk_offsets(cu_seqlens, chunk_size):
    """Shape-only fla.ops.utils.index.prepare_chunk_offsets: [N + 1] int64 (torch's cumsum promotes)."""
    lens = _SEQUENCES[id(cu_seqlens)]
    offsets = FakeTensor((len(lens) + 1,), torch.int64, name="chunk_offsets")
    offsets.item_value = sum(-(-n // chunk_size) for n in lens)
    return offsets


for _module in list(sys.modules.values()):
    if getattr(_module, "__name__", "").startswith("fla."):
        if getattr(_module, "prepare_chunk_indices", None) is not None:
            _module.prepare_chunk_indices = _prepare_chunk_indices
        if getattr(_module, "prepare_chunk_offsets", None) is not None:
            _module.prepare_chunk_offsets = _prepare_chunk_offsets


def _cu_seqlens(lens):
    """cu_seqlens as fla's layers make it: int32, [N + 1]."""
    cu = FakeTensor((len(lens) + 1,), torch.int32, name="cu_seqlens")
    _SEQUENCES[id(cu)] = list(lens)
    return cu


def _bf16(*shape):
    return FakeTensor(shape, torch.bfloat16)


def _f32(*shape):
    return FakeTensor(shape, torch.float32)


def _forward_backward(op, *args, **kwargs):
    """Runs op (an fla chunk function) and the backward of the autograd Function it applied; returns
    the launches of both."""
    LAUNCHES.clear()
    _phase[0] = "forward"
    o, _ = op(*args, **kwargs)
    cls, ctx = _Function.last
    _phase[0] = "backward"
    cls.backward(ctx, FakeTensor(o.shape, o.dtype), None)
    return list(LAUNCHES)


def gla(lens, H, K, V):
    """chunk_gla as fla 0.6.0's GatedLinearAttention layer calls it (mode 'chunk'): gk = logsigmoid(.)/16
    in bf16, state_v_first, no initial or final state."""
    T = sum(lens)
    q, k, gk, v = _bf16(1, T, H, K), _bf16(1, T, H, K), _bf16(1, T, H, K), _bf16(1, T, H, V)
    return _forward_backward(fla.ops.gla.chunk.chunk_gla, q, k, v, g=gk, initial_state=None,
                             output_final_state=False, state_v_first=True, cu_seqlens=_cu_seqlens(lens))


def delta_net(lens, H, K, V, l2norm=True):
    """chunk_delta_rule as fla 0.6.0's DeltaNet layer calls it (beta: bf16; l2 norm of q and k in the
    kernels for qk_norm 'l2')."""
    T = sum(lens)
    q, k, v, beta = _bf16(1, T, H, K), _bf16(1, T, H, K), _bf16(1, T, H, V), _bf16(1, T, H)
    return _forward_backward(fla.ops.delta_rule.chunk.chunk_delta_rule, q, k, v, beta, initial_state=None,
                             output_final_state=False, cu_seqlens=_cu_seqlens(lens),
                             use_qk_l2norm_in_kernel=l2norm)


def gated_deltanet(lens, H, HV, K, V, allow_neg_eigval=False):
    """chunk_gated_delta_rule as fla 0.6.0's GatedDeltaNet layer calls it: l2norm, beta sigmoid and the
    gate (A_log, dt_bias: fp32) in the kernels, state_v_first."""
    T = sum(lens)
    q, k, v = _bf16(1, T, H, K), _bf16(1, T, H, K), _bf16(1, T, HV, V)
    a, b = _bf16(1, T, HV), _bf16(1, T, HV)
    return _forward_backward(fla.ops.gated_delta_rule.chunk.chunk_gated_delta_rule, q, k, v, g=a, beta=b,
                             initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=True,
                             use_beta_sigmoid_in_kernel=True, allow_neg_eigval=allow_neg_eigval, state_v_first=True,
                             cu_seqlens=_cu_seqlens(lens), use_gate_in_kernel=True, A_log=_f32(HV),
                             dt_bias=_f32(HV))


def gated_norm(lens, H, D, activation="swish", eps=1e-6):
    """rms_norm_gated as fla 0.6.0's FusedRMSNormGated calls it on a mixer's output and gate ([1, T, H, D],
    bf16; the weight fp32 [D], no bias, no residual): the per-head output norm of GLA, and of DeltaNet and
    Gated DeltaNet with use_gate."""
    T = sum(lens)
    LAUNCHES.clear()
    _phase[0] = "forward"
    x, g = _bf16(1, T, H, D), _bf16(1, T, H, D)
    y = fla.modules.norm.fused_norm_gate.rms_norm_gated(x, g, _f32(D), None, activation=activation, eps=eps)
    cls, ctx = _Function.last
    _phase[0] = "backward"
    cls.backward(ctx, FakeTensor(y.shape, y.dtype))
    return list(LAUNCHES)


def short_conv(lens, D, W):
    """causal_conv1d as fla 0.6.0's ShortConvolution calls it in training, on one of q's, k's or v's
    projections ([1, T, D] bf16; the weight [D, W] fp32, no bias, no cache, SiLU, backend 'triton')."""
    T = sum(lens)
    LAUNCHES.clear()
    _phase[0] = "forward"
    y, _ = fla.modules.causal_conv1d.ops.causal_conv1d(
        x=_bf16(1, T, D), weight=_f32(D, W), bias=None, residual=None, initial_state=None,
        output_final_state=False, activation="silu", backend="triton", cu_seqlens=_cu_seqlens(lens))
    cls, ctx = _Function.last
    _phase[0] = "backward"
    cls.backward(ctx, FakeTensor(y.shape, y.dtype), None)
    return list(LAUNCHES)


def swiglu(lens, D):
    """The kernels of fla 0.6.0's SwiGLULinearFunction (GatedMLP with fuse_swiglu, the default), on the
    gate and up projections ([1, T, D] bf16): swiglu_fwd in the forward pass; in the backward pass
    swiglu_fwdbwd with use_weight (the gradients and the recomputed product, which the down projection's
    weight gradient needs). The two matrix products around them are torch's and not traced."""
    T = sum(lens)
    ops = fla.modules.activations.ops
    LAUNCHES.clear()
    _phase[0] = "forward"
    x, y = _bf16(1, T, D), _bf16(1, T, D)
    ops.swiglu_fwd(x=x, y=y, output_contiguous=True)
    _phase[0] = "backward"
    ops.swiglu_fwdbwd(x=x, y=y, g=_bf16(1, T, D), use_weight=True, output_contiguous=True)
    return list(LAUNCHES)


def cross_entropy(lens, V, ignore_index=-100):
    """The kernels of fla 0.6.0's fused cross-entropy (fla/modules/fused_cross_entropy/ops.py) as its
    FusedLinearCrossEntropyLoss runs them on each chunk of logits ([N, V] bf16, int64 targets; no label
    smoothing, scale or softcapping): cross_entropy_fwd (each row's loss and log-sum-exp), then
    cross_entropy_bwd with inplace_backward (the logits' gradient written over them, each row's dloss
    its own: a [N] fp32 of stride 1)."""
    N = sum(lens)
    ops = fla.modules.fused_cross_entropy.ops
    LAUNCHES.clear()
    _phase[0] = "forward"
    logits, target = _bf16(N, V), FakeTensor((N,), torch.int64)
    _, _, lse, _, _ = ops.cross_entropy_fwd(logits=logits, target=target, ignore_index=ignore_index)
    _phase[0] = "backward"
    ops.cross_entropy_bwd(logits=logits, target=target, lse=lse, dloss=_f32(N), ignore_index=ignore_index,
                          inplace_backward=True)
    return list(LAUNCHES)


def residual_norm(lens, D, rms):
    """flame's own fused residual add and norm (residual_norm.py) as flame-train runs it at a block's norms
    after the first: the branch bf16 [T, D], the residual stream fp32, weight (and LayerNorm's bias) fp32;
    the backward with the output's gradient (bf16) and the gradient arriving at the sum (fp32)."""
    T = sum(lens)
    LAUNCHES.clear()
    _phase[0] = "forward"
    weight, bias = _f32(D), None if rms else _f32(D)
    _, h, mean, rstd = _residual_norm.forward(torch, _bf16(T, D), _f32(T, D), weight, bias, 1e-5, rms)
    _phase[0] = "backward"
    _residual_norm.backward(torch, _bf16(T, D), _f32(T, D), h, weight, bias, mean, rstd, torch.bfloat16)
    return list(LAUNCHES)


OPS = {"gla": gla, "delta_net": delta_net, "gated_deltanet": gated_deltanet, "gated_norm": gated_norm,
       "short_conv": short_conv, "swiglu": swiglu, "cross_entropy": cross_entropy,
       "residual_norm": residual_norm}
