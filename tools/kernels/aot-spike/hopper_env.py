"""Make Triton and fla believe they run on one H100 (sm_90), with no GPU and no torch.
Import this first. Also bypasses fla/__init__.py and fla/ops/__init__.py (layers/models)."""
import os, sys, types
sys.path.insert(0, "/tmp/aot/stubs")          # stub torch
FLA_ROOT = "/tmp/fla/core"
sys.path.insert(0, FLA_ROOT)
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.driver import CudaDriver
from triton.backends.nvidia.driver import ty_to_cpp

H100_TARGET = GPUTarget("cuda", 90, 32)

class _Utils:
    def get_device_properties(self, dev=0):
        # values of an H100 SXM5 (what triton's CudaUtils reports there)
        return {"max_shared_mem": 232448, "max_num_regs": 65536, "multiprocessor_count": 132,
                "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}

class FakeHopperDriver:
    """Enough of triton.runtime.driver.active for fla's import-time probes and triton.compile."""
    backend = "cuda"
    def __init__(self): self.utils = _Utils()
    def get_current_target(self): return H100_TARGET
    def get_current_device(self): return 0
    def get_current_stream(self, dev=None): return 0
    def map_python_to_cpp_type(self, ty): return ty_to_cpp(ty)
    def is_active(self): return True
    def get_active_torch_device(self): raise RuntimeError("no torch")

triton.runtime.driver.set_active(FakeHopperDriver())

def _pkg(name, path):
    m = types.ModuleType(name); m.__path__ = [path]; m.__file__ = path + "/__init__.py"
    sys.modules[name] = m
_pkg("fla", FLA_ROOT + "/fla"); sys.modules["fla"].__version__ = "0.6.0"
_pkg("fla.ops", FLA_ROOT + "/fla/ops")
_pkg("fla.modules", FLA_ROOT + "/fla/modules")
_pkg("fla.modules.norm", FLA_ROOT + "/fla/modules/norm")
