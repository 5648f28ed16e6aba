"""Check a kernel build directory (tools/kernels/build.py's OUT_DIR) against the manifest contract, and print
what it holds.

  check_manifest.py [--quiet] DIR

Checks: manifest.json's fields and types; every cubin exists, is a CUDA ELF for sm_90 and defines its
entry as a global function symbol; no two entries with equal (kernel, constexprs, args, divisible); an
aligned twin's 'divisible' names int arguments, and the twin has a general entry (divisible empty) beside it;
shared memory within an H100's opt-in limit; no scratch memory; no cubin outside the manifest. Needs only
Python 3."""
import argparse
import json
import os
import struct
import sys

MAX_SHARED = 232448
ARG_TYPES = {"*bf16", "*fp16", "*fp32", "*i32", "*i64", "i32", "i64", "fp32"}
SOURCES = {"tuned", "first", "fixed"}
EM_CUDA = 190
ENTRY_FIELDS = {"kernel": str, "entry": str, "cubin": str, "constexprs": dict, "args": list, "num_warps": int,
                "num_stages": int, "shared": int, "global_scratch": int, "profile_scratch": int,
                "config_source": str, "divisible": list}
SHAPE_KEYS = ("H", "HV", "K", "V", "D", "NB")
BLOCK_KEYS = ("BT", "BC", "BK", "BV", "BS")


def elf_functions(data):
    """(sm, names of the global FUNC symbols) of a 64-bit little-endian CUDA ELF; raises if it is not one."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF")
    machine = struct.unpack_from("<H", data, 0x12)[0]
    if machine != EM_CUDA:
        raise ValueError(f"ELF machine {machine}, not CUDA ({EM_CUDA})")
    flags = struct.unpack_from("<I", data, 0x30)[0]
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != 2:  # SHT_SYMTAB
            continue
        strtab_offset = sections[link][4]
        for i in range(size // entsize):
            st_name, st_info = struct.unpack_from("<IB", data, offset + i * entsize)
            if st_info >> 4 == 1 and st_info & 0xF == 2:  # STB_GLOBAL, STT_FUNC
                end = data.index(b"\0", strtab_offset + st_name)
                names.add(data[strtab_offset + st_name:end].decode())
    return flags & 0xFF, names


def check_entry(directory, k):
    """The problems of one manifest entry (an empty list if none)."""
    problems = [f"{field}: expected {t.__name__}" for field, t in ENTRY_FIELDS.items()
                if not isinstance(k.get(field), t) or (t is int and isinstance(k.get(field), bool))]
    if problems:
        return problems
    if k["kernel"].startswith("fla.") or k["kernel"].rsplit(".", 1)[-1] != k["entry"]:
        problems.append(f"kernel {k['kernel']} and entry {k['entry']} disagree")
    for name, value in k["constexprs"].items():
        if not (value is None or isinstance(value, (bool, int, float, str))):
            problems.append(f"constexpr {name}: {value!r} is not a JSON scalar")
    for arg in k["args"]:
        if not (isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str) and arg[1] in ARG_TYPES):
            problems.append(f"argument {arg!r}: expected [name, one of {sorted(ARG_TYPES)}]")
    ints = {a[0] for a in k["args"] if isinstance(a, list) and len(a) == 2 and a[1] in ("i32", "i64")}
    if not set(k["divisible"]) <= ints or len(set(k["divisible"])) != len(k["divisible"]):
        problems.append(f"divisible {k['divisible']}: not distinct int arguments")
    names = [a[0] for a in k["args"] if isinstance(a, list) and a] + list(k["constexprs"])
    if len(names) != len(set(names)):
        problems.append("a parameter is both a constexpr and an argument, or twice in one")
    if k["num_warps"] not in (1, 2, 4, 8, 16, 32) or k["num_stages"] < 1:
        problems.append(f"num_warps {k['num_warps']}, num_stages {k['num_stages']}")
    if not 0 <= k["shared"] <= MAX_SHARED:
        problems.append(f"shared {k['shared']} B is beyond an H100's {MAX_SHARED}")
    if k["global_scratch"] or k["profile_scratch"]:
        problems.append("needs scratch memory")
    if k["config_source"] not in SOURCES:
        problems.append(f"config_source {k['config_source']!r} not in {sorted(SOURCES)}")
    path = os.path.join(directory, k["cubin"])
    if os.path.basename(k["cubin"]) != k["cubin"] or not os.path.isfile(path):
        return problems + [f"no cubin {k['cubin']}"]
    with open(path, "rb") as f:
        data = f.read()
    try:
        sm, functions = elf_functions(data)
    except (ValueError, struct.error) as e:
        return problems + [f"{k['cubin']}: {e}"]
    if sm != 90:
        problems.append(f"{k['cubin']}: compiled for sm_{sm}, not sm_90")
    if k["entry"] not in functions:
        problems.append(f"{k['cubin']}: no global function {k['entry']} (has {sorted(functions)})")
    return problems


def check(directory):
    """(manifest, problems)."""
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    problems = []
    expected = {"format": 1, "fla": "0.6.0", "triton": "3.7.1", "target": "sm_90a"}
    for field, value in expected.items():
        if manifest.get(field) != value:
            problems.append(f"manifest {field}: {manifest.get(field)!r}, expected {value!r}")
    kernels = manifest.get("kernels")
    if not isinstance(kernels, list) or not kernels:
        return manifest, problems + ["manifest: no kernels"]
    seen, cubins = set(), set()
    general = lambda k: (k.get("kernel"), json.dumps(k.get("constexprs"), sort_keys=True), json.dumps(k.get("args")))
    for k in kernels:
        for problem in check_entry(directory, k):
            problems.append(f"{k.get('cubin')} ({k.get('kernel')}): {problem}")
        ident = general(k) + (json.dumps(k.get("divisible")),)
        if ident in seen:
            problems.append(f"{k.get('cubin')}: a second entry with the kernel, constexprs, args and divisible of another")
        seen.add(ident)
        if k.get("cubin") in cubins:
            problems.append(f"{k.get('cubin')}: named by two entries")
        cubins.add(k.get("cubin"))
    for k in kernels:
        if k.get("divisible") and general(k) + ("[]",) not in seen:
            problems.append(f"{k.get('cubin')}: an aligned twin without its general entry")
    stray = sorted(f for f in os.listdir(directory) if f.endswith(".cubin") and f not in cubins)
    if stray:
        problems.append(f"cubins outside the manifest: {stray}")
    return manifest, problems


def _parameters(k):
    """Every parameter of an entry: constexpr value, or the runtime argument's type."""
    return {**{name: json.dumps(value) for name, value in k["constexprs"].items()}, **dict(k["args"]),
            "divisible": " ".join(k["divisible"]) or "-"}


def distinguishing(kernels):
    """{kernel: names of the parameters whose value or type differs between its entries}."""
    groups = {}
    for k in kernels:
        groups.setdefault(k["kernel"], []).append(_parameters(k))
    return {name: sorted({p for e in entries for p in e if len({str(x.get(p)) for x in entries}) > 1})
            for name, entries in groups.items()}


def _table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def summary(directory, manifest):
    """One row per cubin; 'differs' shows the other parameters that tell a kernel's entries apart."""
    differs = distinguishing(manifest["kernels"])
    rows = [("cubin", "kernel", "shape", "blocks", "w", "s", "shared", "bytes", "source", "differs")]
    for k in manifest["kernels"]:
        c, p = k["constexprs"], _parameters(k)
        other = [n for n in differs[k["kernel"]] if n not in SHAPE_KEYS + BLOCK_KEYS]
        rows.append((k["cubin"], k["entry"], " ".join(f"{n}={c[n]}" for n in SHAPE_KEYS if n in c),
                     " ".join(f"{n}={c[n]}" for n in BLOCK_KEYS if n in c), str(k["num_warps"]),
                     str(k["num_stages"]), str(k["shared"]), str(os.path.getsize(os.path.join(directory, k["cubin"]))),
                     k["config_source"], " ".join(f"{n}={p.get(n, '-')}" for n in other)))
    _table(rows)


def abi(manifest):
    """Per kernel: its distinct runtime argument lists (the launch ABI before the two scratch pointers)
    and the parameters that tell its entries apart."""
    differs = distinguishing(manifest["kernels"])
    kernels = {}
    for k in manifest["kernels"]:
        lists = kernels.setdefault(k["kernel"], {})
        lists.setdefault(", ".join(f"{n}:{t}" for n, t in k["args"]), []).append(k["cubin"])
    for name, lists in kernels.items():
        print(f"{name}\n  differs: {' '.join(differs[name]) or '-'}")
        for args, cubins in lists.items():
            print(f"  ({args})  [{' '.join(cubins)}]")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="print only problems and a one-line total")
    parser.add_argument("--abi", action="store_true", help="print each kernel's distinct argument lists instead")
    parser.add_argument("directory")
    args = parser.parse_args()
    manifest, problems = check(args.directory)
    if not problems and args.abi:
        abi(manifest)
    elif not problems and not args.quiet:
        summary(args.directory, manifest)
    for problem in problems:
        print(f"check_manifest: {problem}", file=sys.stderr)
    kernels = manifest.get("kernels") or []
    size = sum(os.path.getsize(os.path.join(args.directory, k["cubin"])) for k in kernels
               if isinstance(k, dict) and os.path.isfile(os.path.join(args.directory, str(k.get("cubin")))))
    verdict = f"{len(problems)} problems" if problems else "ok"
    print(f"check_manifest: {args.directory}: {len(kernels)} kernels, {size / 1e6:.1f} MB of cubins: {verdict}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
