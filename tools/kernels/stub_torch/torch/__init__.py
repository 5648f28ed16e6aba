"""A stand-in for torch, so that fla-core's kernel modules import on a machine without torch (the kernel
build, tools/kernels/build.py). Only what fla does at import time is here: annotations, dtypes, decorators,
base classes, device queries (answered as one H100); nothing computes. trace.py adds the shape-only
tensors and allocation functions that fla's wrappers call."""
import contextlib
import sys
import types

__version__ = "2.11.0"


class _Any:
    """Absorbs attribute access, calls and `|`; used as a decorator it returns the function unchanged."""

    def __init__(self, name="torch.?"):
        self._name = name

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        return _Any(f"{self._name}.{key}")

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(args[0], _Any):
            return args[0]
        return _Any(f"{self._name}()")

    def __or__(self, other):
        return self

    __ror__ = __or__

    def __repr__(self):
        return f"<stub {self._name}>"

    def __bool__(self):
        return False

    def __iter__(self):
        return iter(())

    def __mro_entries__(self, bases):
        return (object,)


class Tensor:
    pass


class LongTensor(Tensor):
    pass


class dtype:
    """A torch dtype: str() gives torch's spelling ('torch.bfloat16'), which Triton's autotuner keys use."""

    def __init__(self, name, itemsize):
        self.name = name
        self.itemsize = itemsize

    def __repr__(self):
        return f"torch.{self.name}"

    __str__ = __repr__


float32 = dtype("float32", 4)
float16 = dtype("float16", 2)
bfloat16 = dtype("bfloat16", 2)
float64 = dtype("float64", 8)
int8 = dtype("int8", 1)
int16 = dtype("int16", 2)
int32 = dtype("int32", 4)
int64 = dtype("int64", 8)
uint8 = dtype("uint8", 1)
bool = dtype("bool", 1)  # noqa: A001  (torch.bool)
float8_e4m3fn = dtype("float8_e4m3fn", 1)
float8_e5m2 = dtype("float8_e5m2", 1)
# torch's aliases are the same objects
float, half, double, long, int, short = float32, float16, float64, int64, int32, int16  # noqa: A001


class device:
    def __init__(self, *args, **kwargs):
        pass


class Size(tuple):
    pass


class Generator:
    pass


def _module(name, **attrs):
    module = types.ModuleType(name)

    def getattr_(key):
        if key.startswith("__"):
            raise AttributeError(key)
        return _Any(f"{name}.{key}")

    module.__getattr__ = getattr_
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


class _Function:
    @classmethod
    def apply(cls, *args, **kwargs):
        raise RuntimeError("stub torch: no autograd")


class _Module:
    def __init__(self, *args, **kwargs):
        pass


def _passthrough_decorator(fn=None, **kwargs):
    return fn if fn is not None else (lambda f: f)


_H100 = "NVIDIA H100 80GB HBM3"
cuda = _module("torch.cuda", is_available=lambda: True, get_device_name=lambda *a: _H100,
               get_device_capability=lambda *a: (9, 0), device_count=lambda: 1, current_device=lambda: 0,
               device=lambda *a: contextlib.nullcontext())
autograd = _module("torch.autograd", Function=_Function)
autograd.function = _module("torch.autograd.function", Function=_Function, FunctionCtx=object,
                            once_differentiable=lambda f: f)
nn = _module("torch.nn", Module=_Module, Parameter=_Module)
nn.functional = _module("torch.nn.functional")
amp = _module("torch.amp", custom_fwd=_passthrough_decorator, custom_bwd=_passthrough_decorator)
compiler = _module("torch.compiler", disable=_passthrough_decorator, is_compiling=lambda: False)
library = _module("torch.library")
distributed = _module("torch.distributed", is_available=lambda: False, is_initialized=lambda: False)
utils = _module("torch.utils")
utils.checkpoint = _module("torch.utils.checkpoint")
_dynamo = _module("torch._dynamo")
xpu = _module("torch.xpu", is_available=lambda: False)
npu = _module("torch.npu", is_available=lambda: False)
version = _module("torch.version", cuda="13.0", hip=None, __version__=__version__)


def __getattr__(key):
    if key.startswith("__"):
        raise AttributeError(key)
    return _Any(f"torch.{key}")
