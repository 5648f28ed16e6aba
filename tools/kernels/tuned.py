"""The tuned-config table: JSON lines, one autotuner choice each, as harvested from fla on an H100:
  {"kernel": "fla.ops.common.chunk_delta_h.chunk_gated_delta_rule_fwd_kernel_h_blockdim64",
   "keys": ["H", "HV", "K", "V", "BT", "STATE_V_FIRST"],
   "key": ["8", "8", "128", "128", "64", "False", "torch.bfloat16", ...],
   "config": {"kwargs": {"BV": 64}, "num_warps": 4, "num_stages": 2}}
`key` is str() of each element of Triton's autotune cache key: the key arguments' values in order, then
the dtypes of the tensor arguments."""
import json

import triton


def load(path):
    entries = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            entry = json.loads(line)
            for field in ("kernel", "keys", "key", "config"):
                if field not in entry:
                    raise ValueError(f"{path}:{number}: no '{field}'")
            entries.append(entry)
    return entries


# Autotune-key arguments that only bucket the row count (the norms' NB, tools/kernels/README.md), or that
# tell the dense layout from the variable-length one (IS_VARLEN, and the cumsums' batch B, which is 1 in the
# variable-length form): fla's 8 x 2048 runs tune the dense form, flame-train launches only the other, whose
# blocks do the same work. An entry tuned at another value of these serves a variant when nothing tuned at
# its own does.
BUCKETS = ("NB", "IS_VARLEN", "B")


def lookup(entries, qualname, key):
    """The entry for a kernel ('ops.x.y.kernel', fla's module path without 'fla.') and its autotune key
    (str()'d elements): same kernel, same key-argument values (BUCKETS' aside if no entry has them equal
    too); of several, the one whose dtype suffix equals key's too, else the first."""
    def same(e, buckets_too):
        return all(str(v) == key[i] for i, (name, v) in enumerate(zip(e["keys"], e["key"]))
                   if buckets_too or name not in BUCKETS)

    mine = [e for e in entries if e["kernel"].removeprefix("fla.") == qualname]
    matches = [e for e in mine if same(e, True)] or [e for e in mine if same(e, False)]
    exact = [e for e in matches if [str(v) for v in e["key"]] == key]
    return (exact or matches or [None])[0]


def config(entry):
    """The entry's config as a triton.Config."""
    c = entry["config"]
    return triton.Config(c.get("kwargs", {}), num_warps=c["num_warps"], num_stages=c["num_stages"],
                         num_ctas=c.get("num_ctas", 1), maxnreg=c.get("maxnreg"))
