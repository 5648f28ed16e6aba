"""Check that aot.compile_kernel produces byte-identical cubins to Triton's own JIT specialisation
(JITFunction.warmup with fake tensors, fake H100 driver)."""
import sys, hashlib
sys.path.insert(0, "/tmp/aot")  # the spike ran there (README.md)
import tracer, aot, triton
import fla.ops.common.chunk_delta_h as m
import torch
kern = m.chunk_gated_delta_rule_fwd_kernel_h_blockdim64
fn, configs, heur, key = aot.unwrap(kern)
T = tracer.FakeTensor
B, TT, H, K, V = 1, 65536, 6, 256, 512
args = dict(k=T((B, TT, H, K), torch.bfloat16), v=T((B, TT, H, V), torch.bfloat16), w=T((B, TT, H, K), torch.bfloat16),
            v_new=T((B, TT, H, V), torch.bfloat16), g=T((B, TT, H), torch.float32), gk=None,
            h=T((B, 1024, H, V, K), torch.bfloat16), h0=None, ht=None,
            cu_seqlens=T((17,), torch.int32), chunk_offsets=T((17,), torch.int64), T=TT,
            H=H, HV=H, K=K, V=V, BT=64, STATE_V_FIRST=True)
for n, f in heur.items(): args[n] = f(args)
cfg = [c for c in configs if c.kwargs["BV"] == 32 and c.num_warps == 4 and c.num_stages == 2][0]
jk = fn.warmup(**args, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages, grid=(1,))
jit_cubin = jk.asm["cubin"]
spec = {k: (tracer._spec(v)[0] if isinstance(v, T) else (("i32", v) if k == "T" else v)) for k, v in args.items()}
ck, info = aot.compile_kernel(kern, spec, cfg, "/tmp/aot/out_check", "gdn_fwd_h_check")
print("JIT signature:", jk.src.signature if hasattr(jk, "src") else None)
print("JIT attrs:", getattr(jk.src, "attrs", None))
print("jit  cubin sha256", hashlib.sha256(jit_cubin).hexdigest()[:16], len(jit_cubin))
print("aot  cubin sha256", hashlib.sha256(ck.asm["cubin"]).hexdigest()[:16], len(ck.asm["cubin"]))
print("identical:", jit_cubin == ck.asm["cubin"], "| metadata shared", jk.metadata.shared, info["shared"])
