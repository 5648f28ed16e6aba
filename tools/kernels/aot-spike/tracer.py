"""Run fla 0.6.0's chunk ops (forward + backward) on shape-only fake tensors, with Triton launches
intercepted: records every kernel launch (kernel, bound args, grid) and every torch-level compute op.
Usage: import tracer; tracer.trace_gla(...) etc."""
import functools, math, os, sys, types
sys.path.insert(0, "/tmp/aot")  # the spike ran there (README.md)
import hopper_env  # noqa  stub torch + fake H100 driver
import torch
import triton
from triton.runtime.jit import KernelInterface, JITFunction
from triton.runtime.autotuner import Autotuner, Heuristics

EVENTS = []          # ('launch', rec) | ('torch', name, shapes)
_ptr = [1 << 20]

_SIZES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "int32": 4, "int64": 8,
          "long": 8, "int8": 1, "bool": 1, "uint8": 1, "float64": 8, "double": 8, "int16": 2}

def _dt(d):
    if isinstance(d, FakeTensor): return d.dtype
    return d

class FakeTensor(torch.Tensor):
    def __init__(self, shape, dtype, name=None, value=None):
        self.shape = tuple(int(s) for s in shape); self.dtype = dtype; self.device = types.SimpleNamespace(type="cuda", index=0)
        self.name = name; self.value = value
        n = max(1, math.prod(self.shape)) * _SIZES[dtype.n]
        self._ptr = _ptr[0]; _ptr[0] += (n + 255) // 256 * 256
        self.requires_grad = False
    def __repr__(self): return f"T{list(self.shape)}:{self.dtype.n}"
    # --- metadata
    def data_ptr(self): return self._ptr
    def dim(self): return len(self.shape)
    @property
    def ndim(self): return len(self.shape)
    def size(self, i=None): return self.shape if i is None else self.shape[i]
    def numel(self): return math.prod(self.shape)
    def element_size(self): return _SIZES[self.dtype.n]
    def stride(self, i=None):
        st, acc = [], 1
        for s in reversed(self.shape): st.append(acc); acc *= s
        st = tuple(reversed(st))
        return st if i is None else st[i]
    def is_contiguous(self, *a, **k): return True
    def contiguous(self, *a, **k): return self
    def __len__(self): return self.shape[0]
    def get_device(self): return 0
    # --- views / allocation
    def view(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)): shape = tuple(shape[0])
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.numel() // known if s == -1 else s for s in shape)
        t = FakeTensor(shape, self.dtype); t._ptr = self._ptr; return t
    reshape = view
    def view_as(self, o): return self.view(o.shape)
    def new_empty(self, *shape, dtype=None, **k):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)): shape = tuple(shape[0])
        return FakeTensor(shape, dtype or self.dtype)
    new_zeros = new_empty
    def to(self, *a, **k):
        d = k.get("dtype") or (a[0] if a else None)
        d = _dt(d)
        if isinstance(d, torch.dtype) and d is not self.dtype:
            EVENTS.append(("torch", f"cast {self.dtype.n}->{d.n}", [self.shape]))
            return FakeTensor(self.shape, d)
        return self
    def type_as(self, o): return self.to(o.dtype)
    def float(self): return self.to(torch.float32)
    # --- compute ops that fla's wrappers do in PyTorch (logged)
    def sum(self, dim=None, *a, **k):
        EVENTS.append(("torch", f"sum(dim={dim})", [self.shape]))
        shape = list(self.shape); shape.pop(dim)
        return FakeTensor(shape, k.get("dtype") or self.dtype)
    def add_(self, o):
        EVENTS.append(("torch", "add_", [self.shape, o.shape])); return self
    def __getitem__(self, idx):
        EVENTS.append(("host", f"{self.name}[{idx}].item() (device->host sync)", []))
        return FakeTensor((), self.dtype, value=getattr(self, "last", None))
    def item(self): return self.value
    def __mul__(self, o): EVENTS.append(("torch", "mul", [self.shape])); return FakeTensor(self.shape, self.dtype)
    __rmul__ = __mul__

def _like(x, dtype=None, **k): return FakeTensor(x.shape, _dt(dtype) or x.dtype)
def _empty(*shape, dtype=None, **k):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)): shape = tuple(shape[0])
    return FakeTensor(shape, dtype or torch.float32)
def _zeros_like(x, dtype=None, **k):
    EVENTS.append(("torch", "zeros_like(memset)", [x.shape])); return _like(x, dtype)
def _zeros(*shape, dtype=None, **k):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)): shape = tuple(shape[0])
    EVENTS.append(("torch", "zeros(memset)", [shape])); return FakeTensor(shape, dtype or torch.float32)
torch.empty_like = _like; torch.empty = _empty; torch.zeros_like = _zeros_like; torch.zeros = _zeros
torch.is_tensor = lambda x: isinstance(x, FakeTensor)
torch.is_grad_enabled = lambda: True

class _Ctx:
    def save_for_backward(self, *t): self.saved_tensors = t
    def mark_non_differentiable(self, *a): pass
    def set_materialize_grads(self, *a): pass
    needs_input_grad = (True,) * 32
class _Function:
    @classmethod
    def apply(cls, *a):
        ctx = _Ctx(); out = cls.forward(ctx, *a); cls._last_ctx = ctx; return out
torch.autograd.Function = _Function
sys.modules["torch.autograd"].Function = _Function

# ---- intercept launches
_orig_getitem = KernelInterface.__getitem__
def _getitem(self, grid):
    def launch(*args, **kwargs):
        jf = self
        while not isinstance(jf, JITFunction): jf = jf.fn
        bound = dict(zip(jf.arg_names, args)); bound.update(kwargs)
        EVENTS.append(("launch", dict(kernel=self, jit=jf, name=jf.__name__, module=jf.fn.__module__,
                                       args=bound, grid=grid)))
    return launch
KernelInterface.__getitem__ = _getitem

# ---- import the ops, then replace the index helpers (real torch ops) by shape-only versions
import fla.ops.utils.index as _index
import fla.ops.gla.chunk as gla_chunk
import fla.ops.delta_rule.chunk as dn_chunk
import fla.ops.gated_delta_rule.chunk as gdn_chunk

if os.environ.get("AOT_IGNORE_FLA640") == "1":   # compile the refused kernel anyway (to inspect it)
    sys.modules["fla.ops.common.chunk_o"].TRITON_ABOVE_3_7_1 = True
CU = {}
def _prepare_chunk_indices(cu_seqlens, chunk_size, cu_seqlens_cpu=None):
    nt = sum(-(-l // chunk_size) for l in CU[id(cu_seqlens)])
    EVENTS.append(("host", f"prepare_chunk_indices(BT={chunk_size}) -> [{nt},2] {cu_seqlens.dtype.n}", []))
    return FakeTensor((nt, 2), cu_seqlens.dtype, name="chunk_indices")
def _prepare_chunk_offsets(cu_seqlens, chunk_size):
    n = len(CU[id(cu_seqlens)])
    EVENTS.append(("host", f"prepare_chunk_offsets(BT={chunk_size}) -> [{n+1}] int64 (cumsum promotes)", []))
    t = FakeTensor((n + 1,), torch.int64, name="chunk_offsets")
    t.last = sum(-(-l // chunk_size) for l in CU[id(cu_seqlens)]); return t
for m in list(sys.modules.values()):
    if getattr(m, "__name__", "").startswith("fla."):
        if getattr(m, "prepare_chunk_indices", None) is not None: m.prepare_chunk_indices = _prepare_chunk_indices
        if getattr(m, "prepare_chunk_offsets", None) is not None: m.prepare_chunk_offsets = _prepare_chunk_offsets

def make_cu(lens, dtype=torch.int32):
    t = FakeTensor((len(lens) + 1,), dtype, name="cu_seqlens"); CU[id(t)] = list(lens); return t

def bf16(*s): return FakeTensor(s, torch.bfloat16)
def f32(*s): return FakeTensor(s, torch.float32)

def run(fn_cls, fwd_args, out_like):
    EVENTS.clear()
    EVENTS.append(("phase", "forward"))
    o, ht = fn_cls.apply(*fwd_args)
    ctx = fn_cls._last_ctx
    EVENTS.append(("phase", "backward"))
    fn_cls.backward(ctx, bf16(*out_like), None)
    return list(EVENTS)

def trace_gla(B, T, H, K, V, lens=None):
    cu = make_cu(lens) if lens else None
    q, k, g = bf16(B, T, H, K), bf16(B, T, H, K), bf16(B, T, H, K)
    v = bf16(B, T, H, V)
    # chunk_gla(..., state_v_first=True) as fla's GLA layer calls it; gk = logsigmoid()/16 is bf16
    return run(gla_chunk.ChunkGLAFunction, (q, k, v, g, K ** -0.5, None, False, True, cu, None), (B, T, H, V))

def trace_dn(B, T, H, K, V, lens=None):
    cu = make_cu(lens) if lens else None
    q, k, v, beta = bf16(B, T, H, K), bf16(B, T, H, K), bf16(B, T, H, V), bf16(B, T, H)
    return run(dn_chunk.ChunkDeltaRuleFunction,
               (q, k, v, beta, K ** -0.5, None, False, True, cu, None, 64), (B, T, H, V))

def trace_gdn(B, T, H, HV, K, V, lens=None, allow_neg_eigval=False):
    cu = make_cu(lens) if lens else None
    q, k = bf16(B, T, H, K), bf16(B, T, H, K)
    v, a, b = bf16(B, T, HV, V), bf16(B, T, HV), bf16(B, T, HV)
    A_log, dt_bias = f32(HV), f32(HV)
    # forward(ctx, q,k,v,g,beta,scale,h0,output_final_state,state_v_first,cu,cu_cpu,chunk_indices,
    #         l2norm,use_gate_in_kernel,A_log,dt_bias,beta_sigmoid,allow_neg_eigval,cp_context,chunk_size)
    return run(gdn_chunk.ChunkGatedDeltaRuleFunction,
               (q, k, v, a, b, K ** -0.5, None, False, True, cu, None, None, True, True, A_log, dt_bias,
                True, allow_neg_eigval, None, 64), (B, T, HV, V))

# ---- analysis of one launch record
def _spec(v):
    if v is None: return ("constexpr", None)
    if isinstance(v, FakeTensor): return ("*" + {"bfloat16": "bf16", "float32": "fp32", "float": "fp32",
        "int32": "i32", "int64": "i64", "float16": "fp16"}[v.dtype.n], "D" if v.data_ptr() % 16 == 0 else "")
    if isinstance(v, bool): return ("u1", None)
    if isinstance(v, int): return ("i32" if abs(v) < 2**31 else "i64", v)
    if isinstance(v, float): return ("fp32", None)
    return ("?", repr(v))

def analyse(rec):
    k = rec["kernel"]; jf = rec["jit"]
    heur, configs, key, prune = {}, None, None, None
    o = k
    while not isinstance(o, JITFunction):
        if isinstance(o, Heuristics): heur.update(o.values)
        if isinstance(o, Autotuner):
            configs, key = o.configs, o.keys
            prune = getattr(o, "early_config_prune", None)
        o = o.fn
    args = dict(rec["args"])
    launch_opts = {n: args.pop(n) for n in ("num_warps", "num_stages", "maxnreg") if n in args}
    # defaults
    import inspect
    sig = inspect.signature(jf.fn)
    for p in sig.parameters.values():
        if p.name not in args and p.default is not inspect.Parameter.empty: args[p.name] = p.default
    for name, f in heur.items():
        if name not in args: args[name] = f(args)
    cfgs = configs if configs is not None else [triton.Config({}, **launch_opts)]
    if prune is not None and configs is not None:
        try:
            cfgs = prune(cfgs, {**args}, **{})
        except TypeError:
            cfgs = prune(cfgs, args)
    # heuristics that depend on autotuned meta (applied after autotune in fla?)
    params = jf.params
    rt, ce = {}, {}
    for p in params:
        v = args.get(p.name, "<from config>")
        if p.is_constexpr: ce[p.name] = v
        else:
            s = _spec(v)
            if p.do_not_specialize and s[0] in ("i32", "i64"): s = (s[0], "nospec")
            rt[p.name] = s
    keyvals = {kk: args.get(kk) for kk in (key or [])}
    grid = rec["grid"]
    grids = []
    for c in cfgs:
        meta = {**args, **c.kwargs}
        grids.append(tuple(grid(meta)) if callable(grid) else tuple(grid))
    return dict(kernel=rec["kernel"], name=rec["name"], module=rec["module"], runtime=rt, constexpr=ce, heuristics=list(heur),
                key=key, keyvals=keyvals, configs=cfgs, n_configs_total=len(configs) if configs else 0,
                grids=grids, launch_opts=launch_opts, args=args)
