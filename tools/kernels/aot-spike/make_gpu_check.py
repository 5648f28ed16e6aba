"""Build the cubins for gpu_check.py: DeltaNet's chunk_gated_delta_rule_fwd_kernel_h_blockdim64, varlen,
H=HV=8, K=V=128, bf16, all 12 Hopper autotune configs, with THIS venv's Triton (run it under 3.6.0 to
match fla's JIT on the GPU machine byte for byte)."""
import json, sys, triton
sys.path.insert(0, "/tmp/aot")  # the spike ran there (README.md)
import aot
import fla.ops.common.chunk_delta_h as m
kern = m.chunk_gated_delta_rule_fwd_kernel_h_blockdim64
fn, configs, heur, key = aot.unwrap(kern)
args = dict(k="*bf16", v="*bf16", w="*bf16", v_new="*bf16", g=None, gk=None, h="*bf16", h0=None, ht=None,
            cu_seqlens="*i32", chunk_offsets="*i64", T=("i32", 65536), H=8, HV=8, K=128, V=128, BT=64,
            USE_G=False, USE_GK=False, USE_INITIAL_STATE=False, STORE_FINAL_STATE=False, SAVE_NEW_VALUE=True,
            STATE_V_FIRST=False, IS_VARLEN=True)
meta = dict(triton=triton.__version__, kernel=fn.__name__, variants=[])
for c in configs:
    tag = f"fwd_h_BV{c.kwargs['BV']}_w{c.num_warps}_s{c.num_stages}"
    ck, info = aot.compile_kernel(kern, args, c, "/tmp/aot/gpu_check", tag)
    meta["variants"].append(dict(tag=tag, BV=c.kwargs["BV"], num_warps=c.num_warps, num_stages=c.num_stages,
                                 shared=info["shared"], launch_args=info["launch_args"]))
json.dump(meta, open("/tmp/aot/gpu_check/meta.json", "w"), indent=1)
print(json.dumps(meta)[:600])
