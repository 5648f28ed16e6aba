"""Make Triton and fla-core believe they run on one H100 SXM (sm_90), on a machine with neither a GPU nor
torch. Import this before anything else of the build: it puts the stub torch (stub_torch/) first on
sys.path and imports Triton; install() then activates a fake CUDA driver and registers fla's packages.

fla probes the hardware at import time (IS_NVIDIA_HOPPER, check_shared_mem, IS_TF32_SUPPORTED) and those
answers choose its autotune config lists and tilings, so the fake answers exactly as an H100 does."""
import importlib.metadata
import importlib.util
import os
import sys
import types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "stub_torch"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.driver import ty_to_cpp  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)  # Triton compiles capability 90 for sm_90a
MAX_SHARED = 232448  # an H100's cudaDevAttrMaxSharedMemoryPerBlockOptin, bytes


class _Utils:
    def get_device_properties(self, device=0):
        # What Triton's CudaUtils reports on an H100 SXM5.
        return {"max_shared_mem": MAX_SHARED, "max_num_regs": 65536, "multiprocessor_count": 132,
                "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}


class FakeHopperDriver:
    """Enough of triton.runtime.driver.active for fla's import-time probes and for triton.compile."""
    backend = "cuda"

    def __init__(self):
        self.utils = _Utils()

    def get_current_target(self):
        return TARGET

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def map_python_to_cpp_type(self, ty):
        return ty_to_cpp(ty)

    def is_active(self):
        return True

    def get_active_torch_device(self):
        raise RuntimeError("no torch in the kernel build")


def fla_dir():
    """The directory of the installed fla package (found, not imported)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fla-core is not installed in this Python environment")
    return list(spec.submodule_search_locations)[0]


def fla_version():
    return importlib.metadata.version("fla-core")


def _bare_package(name, path):
    module = types.ModuleType(name)
    module.__path__ = [path]
    module.__file__ = os.path.join(path, "__init__.py")
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def install():
    """Activates the fake driver and registers fla, fla.ops, fla.modules and fla.modules.norm as bare
    packages: their __init__.py files import every layer and model (einops, torch.distributed, ...), which
    the kernels don't need. Returns fla's directory."""
    triton.runtime.driver.set_active(FakeHopperDriver())
    root = fla_dir()
    _bare_package("fla", root).__version__ = fla_version()
    for sub in ("ops", "modules", "modules/norm"):
        _bare_package("fla." + sub.replace("/", "."), os.path.join(root, sub))
    return root
