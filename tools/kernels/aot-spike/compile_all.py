"""Compile fla kernel variants for sm_90 on the CPU.
  mode 'first': every variant (all flame shapes, dense+varlen) with its first surviving config
  mode 'all'  : every surviving autotune config of the varlen variants of gla_340M, delta_net_340M, gdn
Writes /tmp/aot/compiled_<mode>.jsonl"""
import json, os, subprocess, sys, time, traceback
from multiprocessing import Pool
sys.path.insert(0, "/tmp/aot")  # the spike ran there (README.md)
import tracer, inventory, aot

MODE = sys.argv[1]
CUOBJ = os.path.dirname(aot.triton.__file__) + "/backends/nvidia/bin/cuobjdump"
SMEM_OPTIN = 232448   # H100 cudaDevAttrMaxSharedMemoryPerBlockOptin

def collect():
    jobs, seen = [], set()
    for model, (kind, shp) in inventory.SHAPES.items():
        for B, T, lens, tag in [(8, 2048, None, "8x2048"), (1, 65536, [4096] * 16, "varlen")]:
            if MODE == "all" and (tag != "varlen" or model in ("gla_7B", "delta_net_1B")): continue
            ev = inventory.trace(kind, shp, B, T, lens)
            for e in ev:
                if e[0] != "launch": continue
                a = tracer.analyse(e[1])
                vk = inventory.variant_key(a)
                if vk in seen: continue
                seen.add(vk)
                cfgs = a["configs"][:1] if MODE == "first" else a["configs"]
                for i, c in enumerate(cfgs):
                    jobs.append((f"{model}/{tag}", a, i, c))
    return jobs

def build_args(a):
    args = {}
    for k, v in a["args"].items():
        if isinstance(v, tracer.FakeTensor): args[k] = tracer._spec(v)[0]
        elif isinstance(v, bool) or v is None: args[k] = v
        elif isinstance(v, int): args[k] = ("i32" if abs(v) < 2**31 else "i64", v)
        elif isinstance(v, float): args[k] = ("fp32", v)
        else: args[k] = v
    return args

JOBS = []
def work(j):
    use, a, i, c = JOBS[j]
    jf = a["kernel"]
    fn = aot.unwrap(jf)[0]
    # constexprs: python values; runtime floats: ('fp32', v) -> aot treats tuple (ty,val)
    args = build_args(a)
    for p in fn.params:
        if p.is_constexpr and isinstance(args.get(p.name), tuple): args[p.name] = args[p.name][1]
        if not p.is_constexpr and isinstance(args.get(p.name), tuple) and args[p.name][0] == "fp32":
            args[p.name] = ("fp32", 0.5)
    tag = f"{a['name']}__{abs(hash((str(inventory.variant_key(a)), i))) % 10**10}"
    t = time.time()
    rec = dict(use=use, kernel=a["name"], module=a["module"], cfg=dict(kw=c.kwargs, w=c.num_warps, s=c.num_stages))
    try:
        ck, info = aot.compile_kernel(jf, args, c, "/tmp/aot/out_" + MODE, tag)
        res = subprocess.run([CUOBJ, "-res-usage", f"/tmp/aot/out_{MODE}/{tag}.cubin"], capture_output=True, text=True).stdout
        import re
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
        rec.update(ok=True, secs=round(time.time() - t, 2), shared=info["shared"], fits=info["shared"] <= SMEM_OPTIN,
                   regs=int(m.group(1)), local=int(m.group(4)), gscratch=info["global_scratch_size"],
                   pscratch=info["profile_scratch_size"], nargs=len(info["ptx_params"]), cubin=info["cubin_bytes"],
                   launch_args=info["launch_args"], tag=tag)
    except Exception as ex:
        rec.update(ok=False, secs=round(time.time() - t, 2), err=f"{type(ex).__name__}: {str(ex)[:300]}")
    return rec

if __name__ == "__main__":
    JOBS.extend(collect()); jobs = list(range(len(JOBS)))
    print(len(jobs), "compiles", flush=True)
    t0 = time.time()
    with open(f"/tmp/aot/compiled_{MODE}.jsonl", "w") as f, Pool(int(os.environ.get("NPROC", "2"))) as pool:
        for n, rec in enumerate(pool.imap_unordered(work, jobs, chunksize=1)):
            f.write(json.dumps(rec, default=str) + "\n"); f.flush()
            if n % 25 == 0: print(n, f"{time.time()-t0:.0f}s", flush=True)
    print("done", f"{time.time()-t0:.0f}s")
