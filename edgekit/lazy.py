"""Import heavy optional modules only when they are used, with an error that says what to install.

Python 3.8 clean and torch-free: the device side uses it for tensorrt, pycuda and onnxruntime. How to
install a plugin runner's modules is declared in its registry entry (`edgekit.device.runtime.registry`),
which hands it down here when the entry registers (`declare`): this module imports nothing of edgekit's
but its errors. The table below holds the built-in runners' modules and those no runner declares.
"""

import importlib
import shlex
import sys
from types import ModuleType
from typing import Any, Dict, Iterable, Optional

from .errors import EdgekitError

_TENSORRT = ("on JetPack it comes with the system Python (sudo apt install python3-libnvinfer); elsewhere run "
             "in the Jetson image (docker/jetson)")
_CUDA = "{python} -m pip install pycuda (needs JetPack's CUDA toolkit), or cuda-python matching the CUDA version " \
        "(11.4 on JetPack 5)"

# top-level module -> how to install it; "{python}" is the interpreter that lacks it. The built-in
# runners' entries (edgekit.device.runtime.registry) declare theirs from here, so a module that imports
# tensorrt without the registry (the engine builder) gives the same hint.
INSTALL_HINTS: Dict[str, str] = {
    "tensorrt": _TENSORRT,
    "pycuda": _CUDA,
    "cuda": _CUDA,
    "onnxruntime": "{python} -m pip install onnxruntime",
    "onnx": "pip install 'edgekit[host]' (or onnx)",
    "pynvml": "pip install nvidia-ml-py",
    "torch": "pip install 'edgekit[host]': the host stages need PyTorch",
    "torch_tensorrt": "{python} -m pip install torch-tensorrt matching your torch (x86 hosts with a CUDA GPU)",
    # 6.0.17 has x86_64 wheels only: on a Jetson (aarch64, Python 3.8) pip builds the sdist (a C++ compiler)
    "mlperf_loadgen": "sudo apt install build-essential python3-dev && {python} -m pip install "
                      "mlcommons-loadgen==6.0.17",
}


# top-level module -> how a registered runner says to install it (first declared wins)
_DECLARED: Dict[str, str] = {}


def declare(modules: Iterable[str], install: str) -> None:
    """Record how to install `modules` (any one of them serves; "{python}" stands for the interpreter)."""
    for module in modules:
        _DECLARED.setdefault(module.split(".")[0], install)


def install_hint(module: str, python: Optional[str] = None) -> str:
    """How to install `module` into `python` (default: this interpreter)."""
    top = module.split(".")[0]
    hint = INSTALL_HINTS.get(top) or _DECLARED.get(top) or "{python} -m pip install " + top
    return hint.replace("{python}", shlex.quote(python or sys.executable or "python3"))


def lazy_import(name: str) -> ModuleType:
    """Import `name` or raise EdgekitError naming what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        hint = install_hint(top)
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
            first = None  # a kept error's traceback would hold the callers' frames (and their locals) alive
            return module
        assert first is not None
        raise first

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") and attribute != "__version__":
            raise AttributeError(attribute)  # copy and pickle probe dunders: never import for those
        return getattr(self.resolve(), attribute)
