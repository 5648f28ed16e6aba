"""AOT-compile one fla Triton kernel for sm_90 without a GPU.
Mirrors what triton.runtime.jit does at a launch: pointer args aligned to 16 B -> tt.divisibility=16
('D'), ints %16==0 -> 'D' (unless do_not_specialize), int==1 and None -> constexpr (dropped from the
launch ABI)."""
import json, os, re, sys
import hopper_env  # noqa: F401  (stub torch, fake H100 driver)
import triton
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner, Heuristics
from hopper_env import H100_TARGET

def unwrap(k):
    """fla kernel object -> (JITFunction, [autotune configs], {heuristic name: fn}, autotune key)"""
    heur, configs, key = {}, None, None
    while not isinstance(k, triton.runtime.jit.JITFunction):
        if isinstance(k, Heuristics): heur.update(k.values)
        if isinstance(k, Autotuner): configs, key = k.configs, k.keys
        k = k.fn
    return k, configs, heur, key

def compile_kernel(kernel, args, config, out_dir, tag):
    """args: {name: value} for EVERY parameter (runtime and constexpr) after heuristics.
    runtime pointer -> '*bf16' etc. (treated as 16B-aligned), ('*fp32', False) unaligned,
    runtime int -> ('i32', value) ; None -> None ; constexpr -> python value."""
    fn, _, _, _ = unwrap(kernel)
    sig, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        v = args.get(name, config.kwargs.get(name, "MISSING"))
        if v == "MISSING":
            raise KeyError(name)
        if p.is_constexpr:
            sig[name] = "constexpr"; constexprs[name] = v
        elif v is None:
            sig[name] = "constexpr"; constexprs[name] = None
        elif isinstance(v, str):                       # aligned pointer
            sig[name] = v; attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, tuple) and isinstance(v[0], str) and v[0].startswith("*"):
            sig[name] = v[0]                           # unaligned pointer
        elif isinstance(v, tuple):                     # ('i32', example value)
            ty, val = v
            if p.do_not_specialize:
                sig[name] = ty
            elif val == 1:
                sig[name] = "constexpr"; constexprs[name] = 1
            else:
                sig[name] = ty
                if val % 16 == 0: attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise TypeError((name, v))
    src = ASTSource(fn, sig, constexprs, attrs)
    opts = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if getattr(config, "maxnreg", None): opts["maxnreg"] = config.maxnreg
    ck = triton.compile(src, target=H100_TARGET, options=opts)
    md = ck.metadata
    os.makedirs(out_dir, exist_ok=True)
    open(f"{out_dir}/{tag}.cubin", "wb").write(ck.asm["cubin"])
    open(f"{out_dir}/{tag}.ptx", "w").write(ck.asm["ptx"])
    open(f"{out_dir}/{tag}.ttgir", "w").write(ck.asm["ttgir"])
    m = re.search(r"\.entry\s+(\w+)\s*\((.*?)\)", ck.asm["ptx"], re.S)
    ptx_params = [l.strip().rstrip(",") for l in m.group(2).splitlines() if l.strip()]
    launch_args = [n for n in sig if sig[n] != "constexpr"]
    info = dict(tag=tag, name=md.name, shared=md.shared, num_warps=md.num_warps, num_ctas=md.num_ctas,
                num_stages=config.num_stages, config=config.kwargs,
                global_scratch_size=md.global_scratch_size, profile_scratch_size=md.profile_scratch_size,
                tmem_size=getattr(md, "tmem_size", None), launch_pdl=md.launch_pdl,
                launch_cooperative_grid=md.launch_cooperative_grid,
                launch_args=[(n, sig[n]) for n in launch_args],
                ptx_params=ptx_params, cubin_bytes=len(ck.asm["cubin"]),
                n_regs=None)
    json.dump(info, open(f"{out_dir}/{tag}.json", "w"), indent=1, default=str)
    return ck, info
