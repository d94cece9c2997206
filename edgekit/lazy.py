"""Import heavy optional modules only when they are used, with an error that says what to install.

Python 3.8 clean and torch-free: the device side uses it for tensorrt, pycuda and onnxruntime. How to
install a runner's modules is declared in its registry entry (`edgekit.device.runtime.registry`) and
read from there; the table below holds the modules no runner declares.
"""

import importlib
import shlex
import sys
from types import ModuleType
from typing import Dict, Optional

from .errors import EdgekitError

# top-level module -> how to install it; "{python}" is the interpreter that lacks it
INSTALL_HINTS: Dict[str, str] = {
    "onnx": "pip install 'edgekit[host]' (or onnx)",
    "pynvml": "pip install nvidia-ml-py",
    "torch": "pip install 'edgekit[host]': the host stages need PyTorch",
}


def install_hint(module: str, python: Optional[str] = None) -> str:
    """How to install `module` into `python` (default: this interpreter)."""
    top = module.split(".")[0]
    hint = INSTALL_HINTS.get(top) or _declared_hint(module) or "{python} -m pip install " + top
    return hint.replace("{python}", shlex.quote(python or sys.executable or "python3"))


def _declared_hint(module: str) -> Optional[str]:
    from .device.runtime import registry  # imported here: the registry imports this module

    return registry.install_hint(module)


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
