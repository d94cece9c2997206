"""TensorRT runner: named-tensor API (`set_tensor_address` + `execute_async_v3`), page-locked host
buffers, one CUDA stream, and CUDA events splitting each query as trtexec does (H2D, compute, D2H).

Written against TensorRT 8.5 (Xavier, JetPack 5) through 10.x; `tensorrt` and `pycuda` are
imported only in `activate`. The engine's metadata is checked first, so an engine built for
another device or TensorRT version is refused with a message saying where to rebuild it.

CUDA graphs (`cuda_graph=True`) capture the engine's enqueue only, as trtexec's --useCudaGraph does:
the copies stay outside the graph, so the split is measured the same way with and without graphs.
A graph bakes in the device addresses it was captured with, so every graph is destroyed when a
buffer is reallocated, and each replay first sets its own input shapes on the context.
"""

import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...errors import EdgekitError
from ...lazy import lazy_import
from .base import Runner, TensorSpec


def cudart_module() -> Any:
    """cuda-python's runtime API: `cuda.bindings.runtime` (12.6+; the only one in 13, which removed
    the `cuda.cudart` trampoline), else `cuda.cudart` (11.x, JetPack 5)."""
    try:
        return lazy_import("cuda.bindings.runtime")
    except EdgekitError as first:
        try:
            return lazy_import("cuda.cudart")
        except EdgekitError:
            raise first from None


def profile_report(times: Dict[str, List[float]], runs: int) -> List[Dict[str, object]]:
    """trtexec's --exportProfile layout: [{"count": runs}, {"name", "timeMs", "averageMs", "medianMs",
    "percentage"}, ...] in layer order, from each layer's milliseconds per run."""
    total = sum(sum(ms) for ms in times.values()) or 1.0
    rows: List[Dict[str, object]] = [{"count": runs}]
    for name, ms in times.items():
        rows.append({"name": name, "timeMs": round(sum(ms), 6), "averageMs": round(sum(ms) / max(runs, 1), 6),
                     "medianMs": round(float(np.median(ms)), 6), "percentage": round(100.0 * sum(ms) / total, 4)})
    return rows


def slowest_layers(report: List[Dict[str, object]], limit: int = 10) -> List[Dict[str, object]]:
    layers = [row for row in report if "name" in row]
    return sorted(layers, key=lambda row: -float(row["averageMs"]))[:limit]  # type: ignore[arg-type]


class TensorRTRunner(Runner):
    name = "tensorrt"
    split_not_applicable: Dict[str, str] = {}

    def __init__(self, engine_path: str, check_metadata: bool = True, cuda_graph: bool = False,
                 spin_wait: bool = False) -> None:
        """`cuda_graph`: capture the enqueue once per input shape and replay it (what MLPerf's Xavier
        SingleStream entry does; it removes most launch overhead at batch 1); needs cuda-python.
        `spin_wait`: poll the last event instead of a blocking stream synchronize (trtexec's --useSpinWait)."""
        super(TensorRTRunner, self).__init__()
        self.engine_path = engine_path
        self.check_metadata = check_metadata
        self.cuda_graph = cuda_graph
        self.spin_wait = spin_wait
        self._graphs: Dict[Tuple[int, ...], Tuple[object, Dict[str, Tuple[int, ...]]]] = {}
        self._inputs: List[TensorSpec] = []
        self._outputs: List[str] = []
        self._host: Dict[str, np.ndarray] = {}
        self._device: Dict[str, Tuple[object, int]] = {}  # name -> (allocation, bytes)
        self.context_cuda: Any = None
        self._epoch: Any = None

    def activate_impl(self) -> None:
        if not os.path.isfile(self.engine_path):
            raise EdgekitError("TensorRT engine not found: {}".format(self.engine_path))
        trt = lazy_import("tensorrt")
        cuda = lazy_import("pycuda.driver")
        cuda.init()
        self.cuda = cuda
        self.trt = trt
        # The device's primary context (the one the CUDA runtime, cuda-python's graphs included, uses),
        # retained and made current here; deactivate pops and releases it, so nothing leaks per activation.
        self.context_cuda = cuda.Device(0).retain_primary_context()
        self.context_cuda.push()
        try:
            self.logger = trt.Logger(trt.Logger.WARNING)
            self.runtime = trt.Runtime(self.logger)
            meta = None
            if self.check_metadata:
                from ..engine.device import cuda_device
                from ..engine.metadata import check_compatible, load_metadata

                meta = load_metadata(self.engine_path)
                device = cuda_device()
                check_compatible(meta, trt.__version__, str(device["name"]), str(device["compute_capability"]),
                                 int(getattr(self.runtime, "num_DLA_cores", 0)), self.engine_path)
            if meta is not None and meta.get("dla_core") is not None:
                self.runtime.DLA_core = int(meta["dla_core"])
            with open(self.engine_path, "rb") as f:
                self.engine = self.runtime.deserialize_cuda_engine(f.read())
            if self.engine is None:
                raise EdgekitError("TensorRT {} could not load {}: rebuild it on this device with edgekit "
                                   "build-engine".format(trt.__version__, self.engine_path))
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
            self.events = [cuda.Event() for _ in range(4)]  # before H2D, after H2D, after compute, after D2H
            self._epoch = cuda.Event()
            self._epoch.record(self.stream)
            self._inputs, self._outputs = [], []
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                    self._inputs.append(TensorSpec(name, dtype, list(self.engine.get_tensor_shape(name))))
                else:
                    self._outputs.append(name)
        except BaseException:
            self._release_context()
            raise

    def _release_context(self) -> None:
        if self.context_cuda is not None:
            self.cuda.Context.pop()
            self.context_cuda.detach()
            self.context_cuda = None

    def deactivate_impl(self) -> None:
        try:
            self._drop_graphs()
            for allocation, _ in self._device.values():
                allocation.free()
            self._device.clear()
            self._host.clear()
            self.context = None
            self.engine = None
            self.runtime = None
        finally:
            self._release_context()

    def _drop_graphs(self) -> None:
        if self._graphs:
            cudart = cudart_module()
            for graph_exec, _ in self._graphs.values():
                cudart.cudaGraphExecDestroy(graph_exec)
            self._graphs.clear()

    def input_specs_impl(self) -> List[TensorSpec]:
        return list(self._inputs)

    def output_names_impl(self) -> List[str]:
        return list(self._outputs)

    def _buffer(self, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Page-locked host buffer and device allocation for `name`, grown when a bigger batch comes."""
        count = int(np.prod(shape))
        nbytes = count * dtype.itemsize
        host = self._host.get(name)
        if host is None or host.nbytes < nbytes or host.dtype != dtype:
            # Every captured graph points at the allocation being freed: replaying one would read and
            # write freed memory, so they all go (and are recaptured on their next use).
            self._drop_graphs()
            self._host[name] = self.cuda.pagelocked_empty(count, dtype)
            if name in self._device:
                self._device[name][0].free()
            self._device[name] = (self.cuda.mem_alloc(max(nbytes, 1)), nbytes)
        return self._host[name][:count].reshape(shape)

    def _bind(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Set shapes and addresses, copy the feed into the page-locked inputs; return output buffers."""
        trt = self.trt
        for spec in self._inputs:
            array = feed[spec.name]
            self.context.set_input_shape(spec.name, array.shape)
            host = self._buffer(spec.name, array.shape, spec.dtype)
            np.copyto(host, array)
        outputs = {}
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            outputs[name] = self._buffer(name, shape, dtype)
        # addresses last: a growing output buffer may have dropped and reallocated after an input's
        for name in [spec.name for spec in self._inputs] + self._outputs:
            self.context.set_tensor_address(name, int(self._device[name][0]))
        return outputs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise EdgekitError("TensorRT failed to enqueue {}".format(self.engine_path))

    def _capture(self, key: Tuple[int, ...], shapes: Dict[str, Tuple[int, ...]]) -> object:
        cudart = cudart_module()
        # TensorRT finishes shape-dependent set-up in its first enqueue: run once before capturing.
        self._execute()
        self.stream.synchronize()
        stream = cudart.cudaStream_t(self.stream.handle)
        # Thread-local capture (as trtexec): another thread's CUDA calls neither join nor break it.
        (err,) = cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        _check(err, "cudaStreamBeginCapture")
        try:
            self._execute()
        except BaseException:
            # Leave the stream usable: a stream left capturing fails every later call on it.
            err, graph = cudart.cudaStreamEndCapture(stream)
            if int(err) == 0 and graph is not None:
                cudart.cudaGraphDestroy(graph)
            raise
        err, graph = cudart.cudaStreamEndCapture(stream)
        _check(err, "cudaStreamEndCapture")
        try:
            err, graph_exec = cudart.cudaGraphInstantiateWithFlags(graph, 0)
            _check(err, "cudaGraphInstantiateWithFlags")
        finally:
            cudart.cudaGraphDestroy(graph)
        self._graphs[key] = (graph_exec, dict(shapes))
        return graph_exec

    def _launch_graph(self, feed: Dict[str, np.ndarray]) -> None:
        shapes = {spec.name: tuple(feed[spec.name].shape) for spec in self._inputs}
        key = tuple(s for name in sorted(shapes) for s in shapes[name])
        entry = self._graphs.get(key)
        graph_exec = entry[0] if entry is not None else self._capture(key, shapes)
        # The context's shapes are part of what the graph replays: set this graph's before its launch.
        for name, shape in shapes.items():
            self.context.set_input_shape(name, shape)
        cudart = cudart_module()
        (err,) = cudart.cudaGraphLaunch(graph_exec, cudart.cudaStream_t(self.stream.handle))
        _check(err, "cudaGraphLaunch")

    def infer_impl(self, feed: Dict[str, np.ndarray]):  # noqa: ANN201
        outputs = self._bind(feed)
        if self.cuda_graph and self._graphs.get(self._key(feed)) is None:
            self._launch_graph(feed)  # the first use captures (and runs twice): not a timed query
            self.stream.synchronize()
        before_h2d, after_h2d, after_compute, after_d2h = self.events
        before_h2d.record(self.stream)
        for spec in self._inputs:
            host = self._host[spec.name][: int(np.prod(feed[spec.name].shape))]
            self.cuda.memcpy_htod_async(self._device[spec.name][0], host, self.stream)
        after_h2d.record(self.stream)
        enqueue_start = time.perf_counter()
        if self.cuda_graph:
            self._launch_graph(feed)
        else:
            self._execute()
        enqueue = time.perf_counter() - enqueue_start
        after_compute.record(self.stream)
        for name, host in outputs.items():
            self.cuda.memcpy_dtoh_async(host, self._device[name][0], self.stream)
        after_d2h.record(self.stream)
        if self.spin_wait:
            while not after_d2h.query():
                pass
        else:
            self.stream.synchronize()
        compute = after_compute.time_since(after_h2d) / 1000.0  # ms -> s
        self._split = {"enqueue": enqueue, "h2d": after_h2d.time_since(before_h2d) / 1000.0, "compute": compute,
                       "d2h": after_d2h.time_since(after_compute) / 1000.0,
                       "gpu_start": before_h2d.time_since(self._epoch) / 1000.0}
        return {name: host.copy() for name, host in outputs.items()}, compute

    def _key(self, feed: Dict[str, np.ndarray]) -> Tuple[int, ...]:
        return tuple(s for name in sorted(spec.name for spec in self._inputs) for s in feed[name].shape)

    def profile_layers(self, feed: Dict[str, np.ndarray], runs: int = 10) -> Optional[List[Dict[str, object]]]:
        """Per-layer times from TensorRT's IProfiler over `runs` runs, on a separate execution context
        (trtexec's --separateProfileRun: profiling slows every layer, so timed queries never carry it)."""
        trt = self.trt
        self._bind(feed)
        times: Dict[str, List[float]] = {}

        class Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name, ms):  # noqa: ANN001 - TensorRT's callback signature
                times.setdefault(layer_name, []).append(float(ms))

        context = self.engine.create_execution_context()
        context.profiler = Profiler()
        for spec in self._inputs:
            context.set_input_shape(spec.name, feed[spec.name].shape)
        for name in [spec.name for spec in self._inputs] + self._outputs:
            context.set_tensor_address(name, int(self._device[name][0]))
        for _ in range(max(1, runs)):
            if not context.execute_async_v3(self.stream.handle):
                raise EdgekitError("TensorRT failed to enqueue {} for profiling".format(self.engine_path))
            self.stream.synchronize()
        return profile_report(times, max(1, runs))

    def runtime_info(self) -> Dict[str, str]:
        trt = lazy_import("tensorrt")
        info = {"runner": self.name, "runtime": "tensorrt", "runtime_version": trt.__version__,
                "engine": os.path.basename(self.engine_path)}
        if self.cuda_graph:
            info["cuda_graph"] = "on"
        if self.spin_wait:
            info["sync"] = "spin-wait"
        return info


def _check(err: object, call: str) -> None:
    if int(err) != 0:  # cudaSuccess
        raise EdgekitError("{} failed ({}): CUDA graphs need CUDA 11.4+ (JetPack 5) and cuda-python".format(call, err))


def tensorrt_available() -> Optional[str]:
    """TensorRT's version when it imports here, else None."""
    try:
        return lazy_import("tensorrt").__version__
    except EdgekitError:
        return None
