"""Minimal stand-in for torch so fla-core's kernel modules import on a box without torch.
Only module-level use is satisfied (annotations, dtypes, decorators, base classes);
nothing here computes. Device queries answer as an H100 (sm_90)."""
import sys, types
__version__ = "2.11.0"

class _Any:
    """Absorbs attribute access / calls / operators. Used as a decorator it returns the
    decorated function unchanged."""
    def __init__(self, name="torch.?"): self._n = name
    def __getattr__(self, k):
        if k.startswith("__"): raise AttributeError(k)
        return _Any(f"{self._n}.{k}")
    def __call__(self, *a, **k):
        if len(a) == 1 and not k and callable(a[0]) and not isinstance(a[0], _Any):
            return a[0]
        return _Any(f"{self._n}()")
    def __or__(self, o): return self
    __ror__ = __or__
    def __repr__(self): return f"<stub {self._n}>"
    def __bool__(self): return False
    def __iter__(self): return iter(())
    def __mro_entries__(self, bases): return (object,)

class Tensor: pass
class LongTensor(Tensor): pass
class dtype:
    def __init__(self, n): self.n = n
    def __repr__(self): return f"torch.{self.n}"
for _n in ["float32","float","float16","half","bfloat16","float64","double","int32","int64","long",
           "int8","int16","uint8","bool","float8_e4m3fn","float8_e5m2"]:
    globals()[_n] = dtype(_n)
class device:
    def __init__(self, *a, **k): pass
class Size(tuple): pass
class Generator: pass

def _mod(name, **attrs):
    m = types.ModuleType(name)
    m.__getattr__ = lambda k: _Any(f"{name}.{k}") if not k.startswith("__") else (_ for _ in ()).throw(AttributeError(k))
    for k, v in attrs.items(): setattr(m, k, v)
    sys.modules[name] = m
    return m

class _Function:
    @staticmethod
    def forward(ctx, *a): raise NotImplementedError
    @classmethod
    def apply(cls, *a, **k): raise RuntimeError("stub torch: no autograd")
class _Module:
    def __init__(self, *a, **k): pass

_H100 = "NVIDIA H100 80GB HBM3"
cuda = _mod("torch.cuda", is_available=lambda: True, get_device_name=lambda *a: _H100,
            get_device_capability=lambda *a: (9, 0), device_count=lambda: 1, current_device=lambda: 0,
            device=lambda *a: __import__("contextlib").nullcontext())
autograd = _mod("torch.autograd", Function=_Function)
autograd.function = _mod("torch.autograd.function", Function=_Function, FunctionCtx=object, once_differentiable=lambda f: f)
nn = _mod("torch.nn", Module=_Module, Parameter=_Module)
nn.functional = _mod("torch.nn.functional")
def _custom_fwdbwd(fwd=None, **k):
    return fwd if fwd is not None else (lambda f: f)
amp = _mod("torch.amp", custom_fwd=_custom_fwdbwd, custom_bwd=_custom_fwdbwd)
compiler = _mod("torch.compiler", disable=lambda f=None, **k: f if f is not None else (lambda g: g),
                is_compiling=lambda: False)
library = _mod("torch.library")
distributed = _mod("torch.distributed", is_available=lambda: False, is_initialized=lambda: False)
utils = _mod("torch.utils"); utils.checkpoint = _mod("torch.utils.checkpoint")
_dynamo = _mod("torch._dynamo")
xpu = _mod("torch.xpu", is_available=lambda: False)
npu = _mod("torch.npu", is_available=lambda: False)
version = _mod("torch.version", cuda="13.0", hip=None, __version__=__version__)

def __getattr__(k):
    if k.startswith("__"): raise AttributeError(k)
    return _Any(f"torch.{k}")
