"""Latency backends: where a layer or a whole model is timed for latency tables.

Each backend times an ONNX ModelProto (a layer from `net.layer_onnx` or a whole network) at a
static batch and returns milliseconds (the median of a window of timed runs), and names the device and
runtime version that the table's cache key records. A backend is found by name through the runner
registry (`registry.latency_backend`): `onnxruntime-cpu` (here) and `tensorrt` (on the device, Python
3.8, no torch) are the timers their runners' entries offer; others, such as `torch-cuda` (it needs
PyTorch), come from the entry-point group `edgekit.latency_backends`. This module imports no registry:
the registry's entries name the classes here.
"""

import contextlib
import os
import platform
import re
import shutil
import tempfile
import time
import warnings
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ...lazy import lazy_import


def cache_dir() -> str:
    """Where latency tables and TensorRT timing caches are kept ($EDGEKIT_CACHE/latency)."""
    root = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgekit")
    return os.path.join(root, "latency")


def _fast_ms(run: Callable[[], Any], warmup: int, min_runs: int, min_seconds: float,
               sync: Callable[[], None] = lambda: None) -> float:
    for _ in range(warmup):
        run()
    sync()
    times: List[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    # The window's median, the statistic the benchmarks report (p50): a faster percentile here put the
    # spiral's students ~5% over budget when measured as users measure them. Bursts from other processes
    # are handled by the callers, which interleave windows and keep each model's best one.
    return float(np.median(times) * 1000.0)


class Backend(object):
    """Made by `registry.latency_backend`, which checks `precision` against the precisions its timer declares."""
    name = "backend"

    def __init__(self, precision: str = "fp32", threads: Optional[int] = None, warmup: int = 3,
                 min_runs: int = 10, min_seconds: float = 0.05) -> None:
        self.precision, self.threads = precision, threads
        self.warmup, self.min_runs, self.min_seconds = warmup, min_runs, min_seconds

    def device(self) -> str:
        raise NotImplementedError

    def runtime_version(self) -> str:
        raise NotImplementedError

    def time_model(self, model: Any, feeds: Dict[str, np.ndarray]) -> float:
        """Milliseconds (the median of a window of timed runs) of one inference of `model` (ModelProto) on `feeds`."""
        raise NotImplementedError

    def timer(self, model: Any, feeds: Dict[str, np.ndarray]) -> Callable[[], float]:
        """A callable that times one more window of `model` each call (for interleaved A/B timing)."""
        raise NotImplementedError

    def time_layer(self, kind: Any, cin: int, cout: int, batch: int) -> float:
        """One layer kind at (cin, cout); backends that do not run ONNX (torch-cuda) override this."""
        from .layers import layer_onnx

        model = layer_onnx(kind, cin, cout, batch)
        return self.time_model(model, feeds_for(model))

    def time_cells(self, kind: Any, cells: List[Tuple[int, int]], batch: int) -> List[float]:
        """One layer kind at each (cin, cout) of `cells`, in order; backends that can time many at once
        (one engine for a kind's cells) override this."""
        return [self.time_layer(kind, cin, cout, batch) for cin, cout in cells]

    def network_timer(self, net: Any, groups: Dict[str, int], batch: int) -> Callable[[], float]:
        """Times one more window of a whole network of the description `net` (edgekit.device.latency.net)
        at these widths each call."""
        from .layers import network_onnx

        model = network_onnx(net, groups, batch)
        return self.timer(model, feeds_for(model))

    def time_network(self, net: Any, groups: Dict[str, int], batch: int) -> float:
        return self.network_timer(net, groups, batch)()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class OnnxRuntimeCpuBackend(Backend):
    name = "onnxruntime-cpu"

    def device(self) -> str:
        return "{} x{} threads".format(_cpu_name(), self.threads or os.cpu_count())

    def runtime_version(self) -> str:
        return "onnxruntime " + lazy_import("onnxruntime").__version__

    def _session(self, model: Any) -> Any:
        ort = lazy_import("onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def time_model(self, model: Any, feeds: Dict[str, np.ndarray]) -> float:
        return self.timer(model, feeds)()

    def timer(self, model: Any, feeds: Dict[str, np.ndarray]) -> Callable[[], float]:
        session = self._session(model)
        first = [True]

        def window() -> float:
            warm = self.warmup if first[0] else 1
            first[0] = False
            return _fast_ms(lambda: session.run(None, feeds), warm, self.min_runs, self.min_seconds)
        return window


class TensorRTBackend(Backend):
    """Times layers and networks as TensorRT engines (static shapes). On the device only.

    - What is timed is GPU compute, as trtexec's "GPU Compute Time": inputs copied to the device once,
      each launch (a CUDA graph) between two CUDA events, outputs left on the device (`time_compute`).
    - A table's cells go many to an engine (`time_cells`): one build per layer kind, not per cell.
    - Every runner it activates is deactivated and its temp folder removed when its cell is done, on
      error too: pycuda aborts at exit on a context stack left non-empty.
    """
    name = "tensorrt"
    # An engine of many cells holds all their weights and inputs and outputs at once: past this many
    # bytes (a Jetson shares its memory with the CPU) the cells go to more than one engine.
    max_engine_bytes = 1 << 30

    def device(self) -> str:
        from ..engine.device import cuda_device

        info = cuda_device()
        return "{} (sm {})".format(info["name"], info["compute_capability"])

    def runtime_version(self) -> str:
        return "tensorrt " + lazy_import("tensorrt").__version__

    def _timing_cache(self) -> str:
        """A timing cache per device and TensorRT version (TensorRT refuses another's), kept with the tables."""
        folder = cache_dir()
        os.makedirs(folder, exist_ok=True)
        tag = "".join(c if c.isalnum() or c in ".-" else "_" for c in "{}-{}".format(
            self.runtime_version(), self.device()))
        return os.path.join(folder, "{}.timing.cache".format(tag))

    def _build(self, model: Any, folder: str) -> str:
        """`model` as a static-shape engine in `folder`; returns its path."""
        from ..engine.builder import BuildConfig, build_engine

        onnx_path = os.path.join(folder, "layer.fp32.onnx")
        with open(onnx_path, "wb") as f:
            f.write(model.SerializeToString())
        batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
        # INT8 is not offered: a random-weight layer has no calibration ranges to build it with.
        # One stream: a profile of branches run side by side would not be each branch's time.
        cfg = BuildConfig(onnx_path, precision=self.precision, static_batch=batch,
                          timing_cache=self._timing_cache(), max_aux_streams=0)
        build_engine(cfg, log=lambda _msg: None)
        return cfg.engine_path

    @contextlib.contextmanager
    def _engine(self, model: Any) -> Iterator[str]:
        folder = tempfile.mkdtemp(prefix="edgekit-latency-")
        try:
            yield self._build(model, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _runner(engine_path: str) -> Any:
        from ..runtime.tensorrt import TensorRTRunner

        return TensorRTRunner(engine_path, cuda_graph=True)

    def _compute_ms(self, runner: Any, feeds: Dict[str, np.ndarray], warmup: int) -> float:
        """The median GPU compute of at least `min_runs` launches over at least `min_seconds`."""
        times = runner.time_compute(feeds, runs=self.min_runs, warmup=warmup)
        started = time.perf_counter()
        while time.perf_counter() - started < self.min_seconds:
            times += runner.time_compute(feeds, runs=self.min_runs, warmup=0)
        return float(np.median(times))

    def time_model(self, model: Any, feeds: Dict[str, np.ndarray]) -> float:
        with self._engine(model) as path, self._runner(path) as runner:
            return self._compute_ms(runner, feeds, self.warmup)

    def timer(self, model: Any, feeds: Dict[str, np.ndarray]) -> Callable[[], float]:
        """Builds once; each window activates a runner and deactivates it before returning, so nothing
        stays current between windows. The engine's folder goes with the timer (or at exit)."""
        folder = tempfile.mkdtemp(prefix="edgekit-latency-")
        try:
            path = self._build(model, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

        def window() -> float:
            with self._runner(path) as runner:
                return self._compute_ms(runner, feeds, self.warmup)

        weakref.finalize(window, shutil.rmtree, folder, True)
        return window

    def time_cells(self, kind: Any, cells: List[Tuple[int, int]], batch: int) -> List[float]:
        """Every (cin, cout) of `kind` as its own branch of one engine (inputs and outputs of its own),
        timed together; each branch's time is the sum of its layers' IProfiler times, per run, and its
        median over the runs. One build per kind instead of one per cell."""
        from .layers import layer_onnx

        models = [layer_onnx(kind, cin, cout, batch) for cin, cout in cells]
        ms: List[Optional[float]] = [None] * len(models)
        for chunk in _chunks(models, self.max_engine_bytes):
            merged = merge_branches({i: models[i] for i in chunk})
            with self._engine(merged) as path, self._runner(path) as runner:
                times = runner.layer_times(feeds_for(merged), runs=max(self.min_runs, 5), warmup=self.warmup)
            for i, value in branch_ms(times, chunk).items():
                ms[i] = value
        for i, value in enumerate(ms):
            if value is None:  # TensorRT fused it with another branch: its time cannot be told apart there
                warnings.warn("latency table: {} at {}x{} has no layer of its own in the shared engine; timed "
                              "alone".format(kind, *cells[i]), RuntimeWarning, stacklevel=2)
                ms[i] = self.time_layer(kind, cells[i][0], cells[i][1], batch)
        return [float(v) for v in ms if v is not None]


def branch_prefix(index: int) -> str:
    return "cell{}/".format(index)


_BRANCH = re.compile(r"(?<![A-Za-z0-9_])cell(\d+)/")


def branch_of(layer_name: str) -> Optional[int]:
    """The branch a TensorRT layer belongs to, from the names in it (a fused layer is named after the
    ONNX nodes it holds, a reformat after the layer it feeds); None when it names none or several."""
    found = {int(m) for m in _BRANCH.findall(layer_name)}
    return found.pop() if len(found) == 1 else None


def branch_ms(times: Dict[str, List[float]], branches: Sequence[int]) -> Dict[int, float]:
    """{branch: median over the runs of its layers' summed milliseconds}, for the branches that have
    layers of their own; a layer naming several branches (fused across them) leaves each of them out."""
    runs = min((len(ms) for ms in times.values()), default=0)
    sums = {b: np.zeros(runs) for b in branches}
    owned, shared = set(), set()
    for name, ms in times.items():
        owner = branch_of(name)
        if owner is None:
            shared |= {int(m) for m in _BRANCH.findall(name)}
        elif owner in sums:
            sums[owner] += np.asarray(ms[:runs], float)
            owned.add(owner)
    return {b: float(np.median(sums[b])) for b in branches if b in owned and b not in shared and runs}


def _chunks(models: Sequence[Any], max_bytes: int) -> List[List[int]]:
    """Indices of `models` in runs whose weights and inputs and outputs stay under `max_bytes`."""
    chunks: List[List[int]] = []
    size = 0
    for i, model in enumerate(models):
        nbytes = _model_bytes(model)
        if not chunks or size + nbytes > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += nbytes
    return chunks


def _model_bytes(model: Any) -> int:
    tensors = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    for value in list(model.graph.input) + list(model.graph.output):
        tensors += int(np.prod([d.dim_value for d in value.type.tensor_type.shape.dim]))
    return 4 * tensors  # float32


def merge_branches(models: Dict[int, Any]) -> Any:
    """One ModelProto holding each model as its own branch: every name (nodes, tensors, weights) under
    `branch_prefix(index)`, each branch its inputs and outputs, nothing shared. Nodes without a name get
    their first output's, so TensorRT's layer names say whose they are."""
    onnx, compose = lazy_import("onnx"), lazy_import("onnx.compose")  # older onnx does not import compose
    nodes, inputs, outputs, inits = [], [], [], []
    for index, model in models.items():
        named = onnx.ModelProto()
        named.CopyFrom(model)
        for node in named.graph.node:
            node.name = node.name or node.output[0]
        prefixed = compose.add_prefix(named, branch_prefix(index))
        nodes += prefixed.graph.node
        inputs += prefixed.graph.input
        outputs += prefixed.graph.output
        inits += prefixed.graph.initializer
    first = next(iter(models.values()))
    graph = onnx.helper.make_graph(nodes, "edgekit_latency_cells", inputs, outputs, initializer=inits)
    merged = onnx.helper.make_model(graph, opset_imports=list(first.opset_import))
    merged.ir_version = first.ir_version
    return merged


def feeds_for(model: Any, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random float32 inputs matching a static-shaped ModelProto's inputs."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds
