"""Latency backends: where a layer or a whole model is timed for latency tables.

Each backend times an ONNX ModelProto (a layer from `net.layer_onnx` or a whole network) at a
static batch and returns milliseconds (the median of a window of timed runs), and names the device and
runtime version that the table's cache key records. A backend is found by name through the runner
registry: `onnxruntime-cpu` (here) and `tensorrt` (on the device, Python 3.8, no torch) are the timers
their runners' entries offer; others, such as `torch-cuda` (it needs PyTorch), come from the
entry-point group `edgekit.latency_backends` (`registry.timer`).
"""

import os
import platform
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ...errors import EdgekitError
from ...lazy import lazy_import
from ..runtime import registry


def get_backend(name: str, precision: Optional[str] = None, **kwargs: Any) -> "Backend":
    """The latency backend `name` at `precision` (default: the first its timer offers); one line when it
    is unknown, cannot load here, or does not time that precision."""
    timer = registry.timer(name)
    precision = precision or timer.precisions[0]
    if precision not in timer.precisions:
        raise EdgekitError("latency backend {} times {} only, not {}; set prune.latency_precision".format(
            name, " or ".join(timer.precisions), precision))
    return timer.factory(precision=precision, **kwargs)


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
    """Made by `get_backend`, which checks `precision` against the precisions its timer declares."""
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
        """One layer kind at every (cin, cout) of `cells`, in order (a backend may batch the builds)."""
        return [self.time_layer(kind, cin, cout, batch) for cin, cout in cells]

    def network_timer(self, net: Any, groups: Dict[str, int], batch: int) -> Callable[[], float]:
        """Times one more window of a whole network of the description `net` (edgekit.device.latency.net)
        at these widths each call."""
        model = net.network_onnx(groups, batch)
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
    """Builds one engine per layer (static shape) and times it with the TensorRT runner. On the device only."""
    name = "tensorrt"

    def device(self) -> str:
        from ..engine.device import cuda_device

        info = cuda_device()
        return "{} (sm {})".format(info["name"], info["compute_capability"])

    def runtime_version(self) -> str:
        return "tensorrt " + lazy_import("tensorrt").__version__

    def timer(self, model: Any, feeds: Dict[str, np.ndarray]) -> Callable[[], float]:
        from ..engine.builder import BuildConfig, build_engine
        from ..runtime.tensorrt import TensorRTRunner

        folder = tempfile.mkdtemp(prefix="edgekit-latency-")
        onnx_path = os.path.join(folder, "layer.fp32.onnx")
        with open(onnx_path, "wb") as f:
            f.write(model.SerializeToString())
        batch = next(iter(feeds.values())).shape[0]
        # INT8 is not offered: a random-weight layer has no calibration ranges to build it with.
        cfg = BuildConfig(onnx_path, precision=self.precision,
                          static_batch=batch, timing_cache=os.path.join(os.getcwd(), "latency.timing.cache"))
        build_engine(cfg, log=lambda _msg: None)
        runner = TensorRTRunner(cfg.engine_path, cuda_graph=True)
        runner.activate()

        def window() -> float:
            return _fast_ms(lambda: runner.infer(feeds, check=False), self.warmup, self.min_runs,
                              self.min_seconds)
        return window

    def time_model(self, model: Any, feeds: Dict[str, np.ndarray]) -> float:
        return self.timer(model, feeds)()


def feeds_for(model: Any, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random float32 inputs matching a static-shaped ModelProto's inputs."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds
