import json, sys, collections
f = sys.argv[1]
rs = [json.loads(l) for l in open(f)]
print(f, "records", len(rs), "ok", sum(r["ok"] for r in rs), "fail", sum(not r["ok"] for r in rs))
for r in rs:
    if not r["ok"]: print("  FAIL", r["kernel"], r["use"], r["cfg"], r["err"][:200])
ok = [r for r in rs if r["ok"]]
print("compile secs: total %.0f, mean %.1f, max %.1f" % (sum(r["secs"] for r in ok), sum(r["secs"] for r in ok)/max(1,len(ok)), max([r["secs"] for r in ok] or [0])))
print("global_scratch>0:", sorted({r["kernel"] for r in ok if r["gscratch"]}), " profile_scratch>0:", sorted({r["kernel"] for r in ok if r["pscratch"]}))
nf = [r for r in ok if not r["fits"]]
print("shared > 232448 (cannot launch on H100; Triton's autotuner skips these):", len(nf))
for k, n in collections.Counter(r["kernel"] for r in nf).items(): print("   ", k, n)
sp = [r for r in ok if r["local"]]
print("register spills (LOCAL>0):", len(sp), collections.Counter(r["kernel"] for r in sp))
print("cubin bytes: total %.1f MB, mean %.0f KB" % (sum(r["cubin"] for r in ok)/1e6, sum(r["cubin"] for r in ok)/len(ok)/1e3))
