"""Runners by name, each declared in one `RunnerEntry`: where it runs and at which precisions, the files
it opens (or builds its own from), the modules `[check]` probes on the device and how to install them,
the latency backend it offers for latency tables, a version probe and a description.

    register(RunnerEntry("onnxruntime", make_onnxruntime, placements={"cpu": ("fp32", "fp16", "int8")},
                         suffixes=(".onnx",), ...))
    create("onnxruntime", "model.fp32.onnx", threads=2)

Everything that depends on a runner reads its entry: runner choice (`harness.choose_runner`), job
planning (`deploy.plan`), which exported model each engine is built from (`layout.engine_source`),
`[check]`'s probe and messages (`deploy.checks`), install hints (handed to `edgekit.lazy` on
registration), the CLI's runner list
and the latency backends (`latency_backend`, `prune.latency_backend`). Adding a runner is
its runner file and its entry.

The torch-free runners register below. Any other (edgekit's own torch runners, a user's package) is an
entry point of the group `edgekit.runners` naming its entry, and a latency backend of its own one of
`edgekit.latency_backends` naming its `Timer` (see `edgekit.plugins`): nothing here names a module
outside this folder, and a plugin is imported only when its name is asked for. Python 3.8 clean.
"""

import glob
import importlib
import importlib.util
import json
import os
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from ... import lazy, plugins
from ...artifacts import sha256_file
from ...errors import EdgekitError
from .base import Runner

Factory = Callable[..., Runner]  # (model path, **options: threads, cuda_graph, spin_wait...) -> Runner
ALL_PRECISIONS = ("fp32", "fp16", "int8")


class Need(NamedTuple):
    """A module the runner imports; any one of `modules` will do."""
    modules: Tuple[str, ...]
    install: str            # how to install it; "{python}" stands for the interpreter that lacks it
    label: str = ""         # what a message calls it (default: the first module)

    @property
    def name(self) -> str:
        return self.label or self.modules[0]


class Timer(NamedTuple):
    """A latency backend for latency tables (`prune.latency_backend`): where layers and models are timed."""
    backend: str
    precisions: Tuple[str, ...]
    factory: Callable[..., Any]   # (precision=, threads=, warmup=, min_runs=, min_seconds=) -> latency Backend
    description: str = ""


class BuiltFrom(NamedTuple):
    """Files the runner does not open itself but builds its own from (TensorRT: engines from ONNX)."""
    suffixes: Tuple[str, ...]
    find: Callable[[str], Optional[str]]   # the file of its own built from this one, if any
    command: str                            # what builds one


class RunnerEntry(NamedTuple):
    name: str
    factory: Factory
    placements: Mapping[str, Tuple[str, ...]]   # where it runs (cpu, gpu, dla) -> the precisions it runs there
    suffixes: Tuple[str, ...] = ()              # the files it opens; () opens any
    needs: Tuple[Need, ...] = ()                # the modules `[check]` probes on the device
    version: Optional[Callable[[], Optional[str]]] = None   # its version when it can run here, else None
    timer: Optional[Timer] = None               # the latency backend it offers, if any
    description: str = ""
    # placement -> what its INT8 runs from (a layout.INT8_SOURCES name); FP32/FP16 run their own
    int8_from: Optional[Mapping[str, str]] = None
    built_from: Optional[BuiltFrom] = None
    # chosen by `--runner auto` and job planning, in registration order; only registered entries are:
    # a plugin is imported when named, never to choose
    auto: bool = False

    def runs(self, path: str) -> bool:
        return not self.suffixes or path.endswith(self.suffixes)

    def builds_from(self, path: str) -> bool:
        return self.built_from is not None and path.endswith(self.built_from.suffixes)

    def precisions_at(self, placement: str) -> Tuple[str, ...]:
        return tuple(self.placements.get(placement_kind(placement), ()))


_RUNNERS: Dict[str, RunnerEntry] = {}


def placement_kind(placement: str) -> str:
    """dla0, dla1 -> dla; cpu and gpu are their own kind."""
    return "dla" if placement.startswith("dla") else placement


def register(entry: RunnerEntry) -> None:
    """Make `entry` a runner that `--runner`, the harness, the planner and `[check]` know."""
    if not isinstance(entry, RunnerEntry):
        raise TypeError("register() takes a RunnerEntry, got {!r}".format(entry))
    _RUNNERS[entry.name] = entry
    for need in entry.needs:
        lazy.declare(need.modules, need.install)


def names() -> List[str]:
    """Every runner name: the registered ones and the plugins' (not imported to list them)."""
    return sorted(set(_RUNNERS) | set(plugins.entry_points(plugins.RUNNERS)))


def get(name: str) -> RunnerEntry:
    """The entry of `name`, importing its plugin on first use; one line when it is unknown or cannot load."""
    if name in _RUNNERS:
        return _RUNNERS[name]
    point = plugins.entry_points(plugins.RUNNERS).get(name)
    if point is None:
        raise EdgekitError("unknown runner {!r}; choose auto or one of {}".format(name, ", ".join(names())))
    entry = plugins.load(point, "runner")
    if not isinstance(entry, RunnerEntry) or entry.name != name:
        raise EdgekitError("the entry point {} = {} ({}) names no RunnerEntry called {!r}".format(
            name, point.value, plugins.RUNNERS, name))
    register(entry)
    return entry


def create(name: str, path: str, **options: object) -> Runner:
    """The runner `name` for `path`, constructed (cheap: nothing is loaded before `activate`)."""
    entry = get(name)
    if not entry.runs(path):
        raise EdgekitError("the {} runner runs {} files, not {}".format(name, "/".join(entry.suffixes), path))
    return entry.factory(path, **options)


def automatic() -> List[RunnerEntry]:
    """The runners `--runner auto` and job planning choose from, in order of preference."""
    return [entry for entry in _RUNNERS.values() if entry.auto]


def runner_for(placement: str, precision: str) -> Optional[RunnerEntry]:
    """The runner a job at (placement, precision) runs on, or None when none runs that combination."""
    return next((e for e in automatic() if precision in e.precisions_at(placement)), None)


# ---- latency backends: the registered runners' timers, then the plugins of edgekit.latency_backends
def latency_backends() -> List[str]:
    """Every latency backend name (plugins are not imported to list them)."""
    offered = {entry.timer.backend for entry in _RUNNERS.values() if entry.timer}
    return sorted(offered | set(plugins.entry_points(plugins.LATENCY_BACKENDS)))


def timer(backend: str) -> Timer:
    """The Timer named `backend`; one line when it is unknown or its plugin cannot load here."""
    for entry in list(_RUNNERS.values()):
        if entry.timer and entry.timer.backend == backend:
            return entry.timer
    point = plugins.entry_points(plugins.LATENCY_BACKENDS).get(backend)
    if point is None:
        raise EdgekitError("unknown latency backend {!r}; choose one of {}".format(
            backend, ", ".join(latency_backends())))
    found = plugins.load(point, "latency backend")
    if not isinstance(found, Timer) or found.backend != backend:
        raise EdgekitError("the entry point {} = {} ({}) names no Timer called {!r}".format(
            backend, point.value, plugins.LATENCY_BACKENDS, backend))
    return found


def latency_backend(name: str, precision: Optional[str] = None, **options: Any) -> Any:
    """The latency backend `name` (an edgekit.device.latency.backends.Backend) at `precision` (default:
    the first its timer offers); one line when it is unknown, cannot load here, or does not time that
    precision. `options`: threads=, warmup=, min_runs=, min_seconds=."""
    found = timer(name)
    precision = precision or found.precisions[0]
    if precision not in found.precisions:
        raise EdgekitError("latency backend {} times {} only, not {}; set prune.latency_precision".format(
            name, " or ".join(found.precisions), precision))
    return found.factory(precision=precision, **options)


# ---- what `edgekit runners` prints: every entry, resolved here or with what to install
def status_lines() -> List[str]:
    """One line per runner and per latency backend: what it is and runs, or why it cannot load here."""
    lines = []
    for name in names():
        try:
            entry = get(name)
        except EdgekitError as exc:  # it says which runner, what is missing and how to install it
            lines.append(str(exc))
            continue
        version = entry.version() if entry.version else None
        where = "; ".join("{} {}".format(k, "/".join(v)) for k, v in entry.placements.items())
        lines.append("runner {}: {} ({}; {}; {}{})".format(
            name, entry.description, "/".join(entry.suffixes) or "any file", where,
            "version " + version if version else "not usable here: " + _missing(entry),
            "; latency backend " + entry.timer.backend if entry.timer else ""))
    for backend in latency_backends():
        try:
            found = timer(backend)
            lines.append("latency backend {}: {} ({})".format(backend, found.description, "/".join(found.precisions)))
        except EdgekitError as exc:
            lines.append(str(exc))
    return lines


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _missing(entry: RunnerEntry) -> str:
    """The first declared need that does not import here, with how to install it."""
    for need in entry.needs:
        if not any(_findable(m) for m in need.modules):
            return "no {}: {}".format(need.name, need.install.replace("{python}", "python3"))
    return "its version probe found nothing"


# ---- the torch-free runners
def _onnxruntime(path: str, **options: object) -> Runner:
    from .onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, threads=options.get("threads"))  # type: ignore[arg-type]


def _tensorrt(path: str, **options: object) -> Runner:
    from .tensorrt import TensorRTRunner

    return TensorRTRunner(path, cuda_graph=bool(options.get("cuda_graph")), spin_wait=bool(options.get("spin_wait")))


def _tensorrt_version() -> Optional[str]:
    from ..engine.api import tensorrt_available

    return tensorrt_available()


def _onnxruntime_version() -> Optional[str]:
    try:
        return importlib.import_module("onnxruntime").__version__
    except ImportError:
        return None


def _onnxruntime_timer(**options: Any) -> Any:
    from ..latency.backends import OnnxRuntimeCpuBackend

    return OnnxRuntimeCpuBackend(**options)


def _tensorrt_timer(**options: Any) -> Any:
    from ..latency.backends import TensorRTBackend

    return TensorRTBackend(**options)


def engine_built_from(onnx_path: str) -> Optional[str]:
    """An engine beside `onnx_path` built from exactly this file (its metadata names the ONNX sha256)."""
    if not os.path.isfile(onnx_path):
        return None
    digest = sha256_file(onnx_path)
    for meta_path in sorted(glob.glob(os.path.join(os.path.dirname(onnx_path) or ".", "*.engine.json"))):
        try:
            with open(meta_path, encoding="utf-8") as f:
                if json.load(f).get("onnx_sha256") == digest:
                    return meta_path[: -len(".json")]
        except (OSError, ValueError):
            continue
    return None


CUDA_BINDINGS = ("pycuda.driver", "cuda.bindings.runtime", "cuda.cudart")

register(RunnerEntry(
    "tensorrt", _tensorrt, placements={"gpu": ALL_PRECISIONS, "dla": ("fp16", "int8")},
    suffixes=(".engine", ".plan"),
    needs=(Need(("tensorrt",), lazy.INSTALL_HINTS["tensorrt"]),
           Need(CUDA_BINDINGS, lazy.INSTALL_HINTS["pycuda"], "pycuda or cuda-python")),
    version=_tensorrt_version,
    timer=Timer("tensorrt", ("fp32", "fp16"), _tensorrt_timer, "GPU compute of one engine per layer kind, on the "
                "device"),
    description="serialized TensorRT engines",
    # GPU INT8 is explicit (the Q/DQ model); Xavier's DLA takes no Q/DQ, so its INT8 is implicit: the
    # FP32 graph with calib.cache
    int8_from={"gpu": "int8.qdq", "dla": "int8.fp32"},
    built_from=BuiltFrom((".onnx",), engine_built_from, "edgekit build-engine"),
    auto=True))
register(RunnerEntry(
    "onnxruntime", _onnxruntime, placements={"cpu": ALL_PRECISIONS}, suffixes=(".onnx",),
    needs=(Need(("onnxruntime",), lazy.INSTALL_HINTS["onnxruntime"]),),
    version=_onnxruntime_version,
    timer=Timer("onnxruntime-cpu", ("fp32",), _onnxruntime_timer, "onnxruntime on this CPU"),
    description="ONNX files on onnxruntime (CPU, CUDA EP)",
    int8_from={"cpu": "int8.cpu"},
    auto=True))
