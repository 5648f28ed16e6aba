"""UNTESTED (written on a CPU-only box). On the GPU machine, with fla 0.6.0 importable (Triton 3.6.0):
  python3 gpu_check.py DIR_WITH_CUBINS
1. runs fla's chunk_gated_delta_rule_fwd_h (DeltaNet case: g=None) on random varlen inputs; fla autotunes;
2. takes the config fla picked, launches OUR AOT cubin of that config through the CUDA driver API (ctypes:
   cuModuleLoadData / cuModuleGetFunction / cuFuncSetAttribute / cuLaunchKernel - what flame would dlsym);
3. checks outputs are bitwise equal, and whether fla's JIT cubin (Triton cache) is byte-identical to ours;
4. times both (the launch itself; fla's includes its Python wrapper)."""
import ctypes, glob, hashlib, json, os, sys, time
import torch
from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h, chunk_gated_delta_rule_fwd_kernel_h_blockdim64 as K
from fla.ops.utils.index import prepare_chunk_indices, prepare_chunk_offsets

d = sys.argv[1]
meta = json.load(open(f"{d}/meta.json"))
torch.manual_seed(0)
dev = "cuda"
H, Kd, Vd, BT = 8, 128, 128, 64
lens = [4096] * 8 + [1000, 3000, 96, 4096 - 1000 - 3000 - 96 + 4096 * 7]
T = sum(lens)
import itertools
cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device=dev)
k = torch.nn.functional.normalize(torch.randn(1, T, H, Kd, device=dev), dim=-1).to(torch.bfloat16)
w = (torch.randn(1, T, H, Kd, device=dev) * 0.1).to(torch.bfloat16)
u = torch.randn(1, T, H, Vd, device=dev).to(torch.bfloat16)
h_ref, vnew_ref, _ = chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u, g=None, cu_seqlens=cu, chunk_size=BT)
torch.cuda.synchronize()
best = K.fn.best_config            # Heuristics -> CachedAutotuner
print("fla picked", best)
tag = f"fwd_h_BV{best.kwargs['BV']}_w{best.num_warps}_s{best.num_stages}"
v = [x for x in meta["variants"] if x["tag"] == tag][0]
cubin = open(f"{d}/{tag}.cubin", "rb").read()

# was fla's JIT cubin the same bytes?
ours = hashlib.sha256(cubin).hexdigest()
cache = os.environ.get("TRITON_CACHE_DIR", os.path.expanduser("~/.triton/cache"))
jit = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in glob.glob(f"{cache}/*/{meta['kernel']}.cubin")]
print("AOT cubin byte-identical to one of fla's JIT cubins:", ours in jit, f"({len(jit)} JIT cubins in cache)")

cuda = ctypes.CDLL("libcuda.so.1")
def ck(rc, what):
    if rc != 0:
        s = ctypes.c_char_p(); cuda.cuGetErrorString(rc, ctypes.byref(s)); raise RuntimeError(f"{what}: {rc} {s.value}")
mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
buf = ctypes.create_string_buffer(cubin, len(cubin))
ck(cuda.cuModuleLoadData(ctypes.byref(mod), buf), "cuModuleLoadData")
ck(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, meta["kernel"].encode()), "cuModuleGetFunction")
if v["shared"] > 49152:   # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
    ck(cuda.cuFuncSetAttribute(fn, 8, ctypes.c_int(v["shared"])), "cuFuncSetAttribute")
cuda.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p,
                                ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]

N = len(lens)
chunk_offsets = prepare_chunk_offsets(cu, BT)
assert chunk_offsets.dtype == torch.int64, chunk_offsets.dtype   # the compiled signature says *i64
NT = len(prepare_chunk_indices(cu, BT))
h = k.new_empty(1, NT, H, Kd, Vd); v_new = torch.empty_like(u)
# launch ABI: non-constexpr args in declaration order, then global_scratch, profile_scratch (NULL: sizes are 0)
vals = [ctypes.c_uint64(t.data_ptr()) for t in (k, u, w, v_new, h, cu, chunk_offsets)] + [ctypes.c_int32(T),
        ctypes.c_uint64(0), ctypes.c_uint64(0)]
params = (ctypes.c_void_p * len(vals))(*[ctypes.cast(ctypes.byref(x), ctypes.c_void_p) for x in vals])
grid = ((Vd + v["BV"] - 1) // v["BV"] * N * H, 1, 1)           # fla: cdiv(V, BV) * N * HV
stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
def launch():
    ck(cuda.cuLaunchKernel(fn, *grid, 32 * v["num_warps"], 1, 1, v["shared"], stream, params, None), "cuLaunchKernel")
launch(); torch.cuda.synchronize()
print("h bitwise equal:", torch.equal(h, h_ref), " v_new bitwise equal:", torch.equal(v_new, vnew_ref),
      " max|dh|:", (h.float() - h_ref.float()).abs().max().item())
for name, f in [("AOT cuLaunchKernel", launch),
                ("fla chunk_gated_delta_rule_fwd_h", lambda: chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u, g=None, cu_seqlens=cu, chunk_size=BT))]:
    for _ in range(3): f()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(50): f()
    torch.cuda.synchronize(); print(f"{name}: {(time.perf_counter() - t) / 50 * 1e6:.1f} us/call")
