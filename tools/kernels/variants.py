"""From recorded launches to kernel variants: what Triton's Heuristics and Autotuner wrappers would do
with a launch's arguments (heuristic values, the autotune key, fla's early_config_prune), and the
distinct variants (one compile each) among all the launches.

A variant is a kernel with everything that selects its compiled code fixed except the autotuned config:
constexpr values, None arguments, pointer element types, runtime ints equal to 1."""
from dataclasses import dataclass, field

import triton
from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.jit import JITFunction

import tracer

# Options a launch (or a Config) passes to the JIT that are not kernel parameters.
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg", "ir_override")
# Triton's CUDA defaults (triton.backends.nvidia.compiler.CUDAOptions).
DEFAULT_NUM_WARPS, DEFAULT_NUM_STAGES = 4, 3


@dataclass
class Variant:
    qualname: str  # 'ops.common.chunk_o.chunk_fwd_kernel_o' (module path without 'fla.', function name)
    jit: JITFunction
    tuner: Autotuner | None
    args: tuple  # positional arguments as the Autotuner (or the JIT, if none) receives them
    kwargs: dict  # keyword arguments likewise (the outer heuristics' values included)
    key: list | None  # Triton's autotune cache key, each element str()'d; None when not autotuned
    configs: list  # fla's configs after early_config_prune, or the launch's own options if not autotuned
    models: set = field(default_factory=set)
    phases: set = field(default_factory=set)

    @property
    def entry(self):
        return self.jit.__name__

    @property
    def key_names(self):
        """The autotune key's argument names that the launch passes (Triton skips absent ones)."""
        if not self.autotuned:
            return []
        present = {**dict(zip(self.tuner.arg_names, self.args)), **self.kwargs}
        return [k for k in self.tuner.keys if k in present]

    @property
    def autotuned(self):
        return self.tuner is not None and len(self.tuner.configs) > 1

    def values(self, config):
        """Every JIT parameter's value for this variant compiled with config (an entry of configs or a
        tuned one): the config's kwargs, the heuristics under the autotuner, the defaults."""
        kwargs = {**self.kwargs, **config.all_kwargs()} if self.tuner else dict(self.kwargs)
        kernel = self.tuner.fn if self.tuner else self.jit
        kernel = _apply_heuristics(kernel, self.args, kwargs)
        assert kernel is self.jit
        values = dict(zip(self.jit.arg_names, self.args))
        values.update((k, v) for k, v in kwargs.items() if k not in LAUNCH_OPTIONS)
        for p in self.jit.params:
            if p.name not in values:
                if not p.has_default:
                    raise ValueError(f"{self.qualname}: no value for parameter {p.name}")
                values[p.name] = p.default
        unknown = set(values) - set(self.jit.arg_names)
        if unknown:
            raise ValueError(f"{self.qualname}: unknown arguments {sorted(unknown)}")
        return {name: values[name] for name in self.jit.arg_names}

    def prune(self, configs):
        """fla's early_config_prune, called as Triton's Autotuner calls it."""
        prune = self.tuner.early_config_prune if self.tuner else None
        if prune is None:
            return list(configs)
        return prune(list(configs), dict(zip(self.tuner.arg_names, self.args)), **self.kwargs)


def _apply_heuristics(kernel, args, kwargs):
    """Triton's Heuristics.run for every Heuristics wrapper from kernel down; returns the first non-Heuristics."""
    while isinstance(kernel, Heuristics):
        for name, heuristic in kernel.values.items():
            kwargs[name] = heuristic({**dict(zip(kernel.arg_names, args)), **kwargs})
        kernel = kernel.fn
    return kernel


def _jit_of(kernel):
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def _autotune_key(tuner, args, kwargs):
    """Triton's Autotuner.run cache key (also fla's AutotuneKey.build): the key arguments' values in key
    order, then str(dtype) of every tensor argument in argument order; each element str()'d here."""
    given = {**dict(zip(tuner.arg_names, args)), **kwargs}
    given = {k: v for k, v in given.items() if k in tuner.arg_names}
    key = [given[k] for k in tuner.keys if k in given]
    key += [str(v.dtype) for v in given.values() if hasattr(v, "dtype")]
    return [str(v) for v in key]


def resolve(launch):
    """A recorded launch as a Variant (not yet merged with equal ones)."""
    args, kwargs = launch.args, dict(launch.kwargs)
    kernel = _apply_heuristics(launch.kernel, args, kwargs)
    jit = _jit_of(kernel)
    qualname = f"{jit.fn.__module__}.{jit.__name__}".removeprefix("fla.")
    if isinstance(kernel, Autotuner):
        if kernel.perf_model is not None:
            raise NotImplementedError(f"{qualname}: autotuner perf_model")
        variant = Variant(qualname, jit, kernel, args, kwargs, None, [])
        variant.configs = variant.prune(kernel.configs)
        if variant.autotuned:
            variant.key = _autotune_key(kernel, args, kwargs)
    else:
        options = {k: kwargs.pop(k) for k in LAUNCH_OPTIONS if k in kwargs}
        config = triton.Config({}, num_warps=options.pop("num_warps", DEFAULT_NUM_WARPS),
                               num_stages=options.pop("num_stages", DEFAULT_NUM_STAGES))
        if options:
            raise NotImplementedError(f"{qualname}: launch options {options}")
        variant = Variant(qualname, jit, None, args, kwargs, None, [config])
    variant.phases.add(launch.phase)
    return variant


def spec(param, value):
    """What of an argument's value selects compiled code (see aot.signature): the value of a constexpr;
    None; a pointer's element type; a runtime int's type, or 1 (specialised away)."""
    if param.is_constexpr:
        return ("constexpr", value)
    if value is None:
        return ("none",)
    if isinstance(value, tracer.FakeTensor):
        return ("pointer", str(value.dtype))
    if isinstance(value, bool):
        raise NotImplementedError(f"runtime bool argument {param.name}")
    if isinstance(value, int):
        if not param.do_not_specialize and value == 1:
            return ("constexpr", 1)
        return ("int", -2**31 <= value < 2**31)
    if isinstance(value, float):
        return ("float",)
    raise TypeError(f"argument {param.name}: {value!r}")


def identity(variant):
    """Equal for launches that compile to the same code with the same config."""
    values = {**dict(zip(variant.jit.arg_names, variant.args)), **variant.kwargs}
    params = {p.name: p for p in variant.jit.params}
    return (variant.qualname,
            tuple((name, spec(params[name], v)) for name, v in sorted(values.items()) if name in params))


def merge(variants, launches, model):
    """Adds the launches' variants to variants ({identity: Variant}); returns the identities seen."""
    seen = []
    for launch in launches:
        variant = resolve(launch)
        ident = identity(variant)
        known = variants.setdefault(ident, variant)
        if known.key != variant.key:
            raise ValueError(f"{variant.qualname}: one variant, two autotune keys {known.key} {variant.key}")
        known.models.add(model)
        known.phases |= variant.phases
        seen.append(ident)
    return seen
