"""Import heavy optional modules only when they are used, with an error that says what to install.

Python 3.8 clean and torch-free: the device side uses it for tensorrt, pycuda and onnxruntime.
"""

import importlib
import sys
from types import ModuleType
from typing import Any, Optional

from .errors import EdgekitError

INSTALL_HINTS = {
    "onnxruntime": "pip install 'edgekit[device]' (or onnxruntime)",
    "onnx": "pip install 'edgekit[host]' (or onnx)",
    "tensorrt": "run on the device or in the Jetson image (docker/jetson); on JetPack it comes with "
                "the system Python (python3-libnvinfer)",
    "pycuda": "pip install pycuda on the device (needs the CUDA toolkit from JetPack)",
    "cuda": "pip install cuda-python matching the CUDA version (11.4 on JetPack 5) for CUDA graphs",
    "pynvml": "pip install nvidia-ml-py",
    "torch": "pip install 'edgekit[host]': the host stages need PyTorch",
    "torch_tensorrt": "pip install torch-tensorrt matching your torch (x86 hosts with a CUDA GPU)",
    # 6.0.17 has x86_64 wheels only: on a Jetson (aarch64, Python 3.8) pip builds the sdist (a C++ compiler)
    "mlperf_loadgen": "pip install mlcommons-loadgen==6.0.17 (on a Jetson pip builds it from source: "
                      "sudo apt install build-essential python3-dev first)",
}


def lazy_import(name: str) -> ModuleType:
    """Import `name` or raise EdgekitError naming what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        hint = INSTALL_HINTS.get(top, "pip install " + top)
        if isinstance(exc, ModuleNotFoundError) and exc.name == top:
            raise EdgekitError("{} is not installed: {}".format(top, hint)) from None
        # installed but broken (a missing shared library, a wrong CUDA): say what failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError("{} failed to import ({}): {}".format(top, first, hint)) from None


class LazyModule(object):
    """A module imported on first use: the first of `names` that imports (an older layout last).

    Module-level handles of this kind let code spell `trt.Logger` while tensorrt is imported only when
    something runs (a type checker sees the real module instead: see edgekit.device.engine.api). The
    import is done once; it is looked up again only when sys.modules holds another module under that
    name (tests install fakes per test), so a timed loop pays a dictionary lookup, not an import.
    """

    def __init__(self, *names: str) -> None:
        self._names = names
        self._module: Optional[ModuleType] = None
        self._name = ""

    def resolve(self) -> ModuleType:
        module = self._module
        if module is not None and sys.modules.get(self._name) is module:
            return module
        first: Optional[EdgekitError] = None
        for name in self._names:
            try:
                module = lazy_import(name)
            except EdgekitError as exc:
                first = first or exc
                continue
            self._module, self._name = module, name
            return module
        assert first is not None
        raise first

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") and attribute != "__version__":
            raise AttributeError(attribute)  # copy and pickle probe dunders: never import for those
        return getattr(self.resolve(), attribute)
