"""Runners by name: adding a runtime is one `register` call (issue 10, item 6).

    register("onnxruntime", lambda path, **o: OnnxRuntimeRunner(path, threads=o.get("threads")),
             suffixes=(".onnx",))
    create("onnxruntime", "model.fp32.onnx", threads=2)

The harness picks runners only through here (`harness.choose_runner`/`make_runner`). A runtime
that needs torch registers from its host module, named in `PLUGINS` so the device side imports it
only when asked for (the device side never loads torch). Python 3.8 clean.
"""

import importlib
from typing import Callable, Dict, List, Optional, Tuple

from ...errors import EdgekitError
from .base import Runner

Factory = Callable[..., Runner]  # (model path, **options: threads, cuda_graph, spin_wait...) -> Runner


class RunnerEntry(object):
    def __init__(self, name: str, factory: Factory, suffixes: Tuple[str, ...] = (),
                 available: Optional[Callable[[], Optional[str]]] = None, description: str = "") -> None:
        self.name = name
        self.factory = factory
        self.suffixes = tuple(suffixes)
        self.available = available
        self.description = description

    def runs(self, path: str) -> bool:
        return not self.suffixes or path.endswith(self.suffixes)


_RUNNERS: Dict[str, RunnerEntry] = {}
# runtimes whose module registers them on import (host-only: they import torch)
PLUGINS = {"pytorch": "edgekit.host.torch_runners", "torch-tensorrt": "edgekit.host.torch_runners"}


def register(name: str, factory: Factory, suffixes: Tuple[str, ...] = (),
             available: Optional[Callable[[], Optional[str]]] = None, description: str = "") -> None:
    """Make `name` a runner `--runner` and the harness accept; `suffixes`: the model files it runs;
    `available`: its version when it can run here, else None."""
    _RUNNERS[name] = RunnerEntry(name, factory, suffixes, available, description)


def names() -> List[str]:
    return sorted(set(_RUNNERS) | set(PLUGINS))


def get(name: str) -> RunnerEntry:
    if name not in _RUNNERS and name in PLUGINS:
        importlib.import_module(PLUGINS[name])
    if name not in _RUNNERS:
        raise EdgekitError("unknown runner {!r}; choose auto or one of {}".format(name, ", ".join(names())))
    return _RUNNERS[name]


def create(name: str, path: str, **options: object) -> Runner:
    """The runner `name` for `path`, constructed (cheap: nothing is loaded before `activate`)."""
    entry = get(name)
    if not entry.runs(path):
        raise EdgekitError("the {} runner runs {} files, not {}".format(name, "/".join(entry.suffixes), path))
    return entry.factory(path, **options)


def _onnxruntime(path: str, **options: object) -> Runner:
    from .onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, threads=options.get("threads"))  # type: ignore[arg-type]


def _tensorrt(path: str, **options: object) -> Runner:
    from .tensorrt import TensorRTRunner

    return TensorRTRunner(path, cuda_graph=bool(options.get("cuda_graph")), spin_wait=bool(options.get("spin_wait")))


def _tensorrt_version() -> Optional[str]:
    from .tensorrt import tensorrt_available

    return tensorrt_available()


def _onnxruntime_version() -> Optional[str]:
    try:
        return importlib.import_module("onnxruntime").__version__
    except ImportError:
        return None


register("onnxruntime", _onnxruntime, (".onnx",), _onnxruntime_version, "ONNX files on onnxruntime (CPU, CUDA EP)")
register("tensorrt", _tensorrt, (".engine", ".plan"), _tensorrt_version, "serialized TensorRT engines")
