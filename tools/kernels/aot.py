"""Compile one kernel variant for sm_90a without a GPU: triton.compile of an ASTSource built as Triton's JIT
builds it at a launch (the spike showed the cubin is then byte-identical to the JIT's):
  * a tl.constexpr parameter: compiled in;
  * an argument passed as None: compiled in as constexpr None;
  * a pointer: '*bf16' etc., with tt.divisibility=16 (the JIT gives it to every 16-byte-aligned address,
    i.e. every torch allocation): the launcher must pass 16-byte-aligned buffers;
  * a runtime int: 'i32' (or 'i64' past int32), except that an int equal to 1 is compiled in as constexpr 1
    unless the parameter is do_not_specialize. An int that is a multiple of 16 gets tt.divisibility=16, as
    the JIT gives it, only in the variant's aligned twin (aligned=True; the manifest's 'divisible' lists
    those ints, and the launcher takes the twin only when each is a multiple of 16 at the launch): with it
    Triton knows rows of a strided tensor start 16-byte aligned and vectorises their loads;
  * a float: 'fp32'.
The runtime parameters, in order, plus two hidden pointers (global and profile scratch), make the launch ABI."""
import re
from dataclasses import dataclass

import triton
from triton.compiler import ASTSource

import hopper
import tracer

_POINTER_TYPES = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32", "int32": "*i32", "int64": "*i64"}


@dataclass
class Signature:
    types: dict  # name -> Triton type string or 'constexpr', for every parameter in order
    constexprs: dict  # name -> value, the compile-time parameters in order
    attrs: dict  # (index,) -> [['tt.divisibility', 16]]
    divisible: list  # the runtime ints compiled as multiples of 16 (aligned twins only), in order

    @property
    def args(self):
        """The runtime launch parameters in order: [name, type]."""
        return [[name, ty] for name, ty in self.types.items() if ty != "constexpr"]


def _int_type(value):
    return "i32" if -2**31 <= value < 2**31 else "i64"


def signature(jit, values, aligned=False):
    """The compile signature of jit for values (every parameter's value, see Variant.values); aligned: the
    aligned twin's, in which each runtime int that is a multiple of 16 is compiled as one."""
    types, constexprs, attrs, divisible = {}, {}, {}, []
    for i, p in enumerate(jit.params):
        value = values[p.name]
        if p.is_constexpr or value is None:
            types[p.name], constexprs[p.name] = "constexpr", value
            continue
        if p.annotation_type:
            raise NotImplementedError(f"{jit.__name__}: annotated runtime parameter {p.name}")
        if isinstance(value, tracer.FakeTensor):
            types[p.name] = _POINTER_TYPES[value.dtype.name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            raise NotImplementedError(f"{jit.__name__}: runtime bool parameter {p.name}")
        elif isinstance(value, int):
            if value == 1 and not p.do_not_specialize:
                types[p.name], constexprs[p.name] = "constexpr", 1
            else:
                types[p.name] = _int_type(value)
                if aligned and value % 16 == 0 and not p.do_not_specialize:
                    attrs[(i,)] = [["tt.divisibility", 16]]
                    divisible.append(p.name)
        elif isinstance(value, float):
            types[p.name] = "fp32"
        else:
            raise TypeError(f"{jit.__name__}: parameter {p.name} = {value!r}")
    return Signature(types, constexprs, attrs, divisible)


@dataclass
class Compiled:
    cubin: bytes
    entry: str
    shared: int
    num_warps: int
    global_scratch: int
    profile_scratch: int
    ptx_params: int  # parameters of the PTX entry (the runtime ones + the two scratch pointers)


def compile_variant(jit, sig, config):
    """Compiles for the H100 target; raises if the result could not be launched as the manifest says."""
    if getattr(config, "num_ctas", 1) != 1:
        raise ValueError(f"num_ctas {config.num_ctas}: clusters are not supported")
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if config.maxnreg:
        options["maxnreg"] = config.maxnreg
    source = ASTSource(jit, sig.types, sig.constexprs, sig.attrs)
    kernel = triton.compile(source, target=hopper.TARGET, options=options)
    md = kernel.metadata
    ptx = kernel.asm["ptx"]
    match = re.search(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.S)
    if match is None or match.group(1) != jit.__name__:
        raise RuntimeError(f"{jit.__name__}: PTX entry not found")
    ptx_params = len([line for line in match.group(2).splitlines() if line.strip()])
    if ptx_params != len(sig.args) + 2:
        raise RuntimeError(f"{jit.__name__}: {ptx_params} PTX parameters for {len(sig.args)} runtime arguments + 2")
    if md.num_ctas != 1 or md.launch_pdl or md.launch_cooperative_grid or getattr(md, "tmem_size", 0):
        raise RuntimeError(f"{jit.__name__}: needs clusters, PDL, a cooperative launch or tensor memory")
    return Compiled(kernel.asm["cubin"], md.name, md.shared, md.num_warps, md.global_scratch_size,
                    md.profile_scratch_size, ptx_params)
