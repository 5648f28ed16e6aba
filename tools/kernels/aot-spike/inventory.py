"""Trace the three ops for flame's configs and print/collect the kernel inventory."""
import json, sys
sys.path.insert(0, "/tmp/aot")  # the spike ran there (README.md)
import tracer

SHAPES = {  # name: (trace fn, args)   8x2048 dense and 1x65536 varlen (16 docs of 4096)
  "gla_340M":  ("gla", dict(H=4,  K=128, V=256)),
  "gla_7B":    ("gla", dict(H=16, K=128, V=256)),
  "delta_net_340M": ("dn", dict(H=8,  K=128, V=128)),
  "delta_net_1B":   ("dn", dict(H=16, K=128, V=128)),
  "gated_deltanet_340M_1B": ("gdn", dict(H=6, HV=6, K=256, V=512)),
}
def trace(kind, shp, B, T, lens):
    if kind == "gla": return tracer.trace_gla(B, T, shp["H"], shp["K"], shp["V"], lens)
    if kind == "dn": return tracer.trace_dn(B, T, shp["H"], shp["K"], shp["V"], lens)
    return tracer.trace_gdn(B, T, shp["H"], shp["HV"], shp["K"], shp["V"], lens)

def variant_key(a):
    rt = tuple((k, v[0], v[1] if v[1] in ("D", "", "nospec", None) else ("1" if v[1] == 1 else ("D" if v[1] % 16 == 0 else "")))
               for k, v in a["runtime"].items())
    ce = tuple((k, repr(v)) for k, v in a["constexpr"].items() if v != "<from config>")
    return (a["module"], a["name"], rt, ce)

if __name__ == "__main__":
    verbose = "-v" in sys.argv
    variants = {}
    per_model = {}
    for model, (kind, shp) in SHAPES.items():
        for B, T, lens, tag in [(8, 2048, None, "8x2048"), (1, 65536, [4096] * 16, "varlen1x65536")]:
            ev = trace(kind, shp, B, T, lens)
            phase = None
            for e in ev:
                if e[0] == "phase": phase = e[1]; continue
                if e[0] != "launch": continue
                a = tracer.analyse(e[1])
                vk = variant_key(a)
                d = variants.setdefault(vk, dict(a=a, uses=set(), phases=set()))
                d["uses"].add(f"{model}/{tag}"); d["phases"].add(phase)
                per_model.setdefault(model, set()).add(vk)
    kernels = {}
    for vk, d in variants.items():
        kernels.setdefault((vk[0], vk[1]), []).append(d)
    total_v = total_c = 0
    out = []
    for (mod, name), ds in kernels.items():
        a0 = ds[0]["a"]
        ncfg = [len(d["a"]["configs"]) for d in ds]
        total_v += len(ds); total_c += sum(ncfg)
        print(f"\n## {mod}.{name}  [{'/'.join(sorted(set().union(*[d['phases'] for d in ds])))}]")
        print(f"   autotune key={a0['key']} configs={a0['n_configs_total']} heuristics={a0['heuristics']}")
        print(f"   runtime args: " + ", ".join(f"{k}:{v[0]}{'' if v[1] in (None,'') else '/'+str(v[1])}" for k, v in a0["runtime"].items()))
        for d in ds:
            a = d["a"]
            ce = {k: v for k, v in a["constexpr"].items()}
            print(f"   - {len(a['configs'])} cfgs after prune; keyvals={a['keyvals']}; constexpr={ce}; grid(cfg0)={a['grids'][0]}; launch_opts={a['launch_opts']}")
            if verbose: print(f"       uses={sorted(d['uses'])}")
            out.append(dict(module=mod, name=name, key=a["key"], keyvals={k: repr(v) for k, v in a["keyvals"].items()},
                            constexpr={k: repr(v) for k, v in ce.items()},
                            runtime={k: list(map(str, v)) for k, v in a["runtime"].items()},
                            configs=[dict(kw=c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in a["configs"]],
                            grid_cfg0=a["grids"][0], uses=sorted(d["uses"]), phases=sorted(d["phases"])))
    print(f"\nkernels={len(kernels)} variants={total_v} variant x config compiles={total_c}")
    for m, s in per_model.items(): print(f"  {m}: {len(s)} variants")
    json.dump(out, open("/tmp/aot/inventory.json", "w"), indent=1, default=str)
