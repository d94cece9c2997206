"""TensorRT runner: named-tensor API (`set_tensor_address` + `execute_async_v3`), page-locked host
buffers, one CUDA stream, and CUDA events splitting each query as trtexec does (H2D, compute, D2H).

Written against TensorRT 8.5 (Xavier, JetPack 5) through 10.x; `tensorrt` and `pycuda` are
imported only in `activate`. The engine's metadata is checked first, so an engine built for
another device or TensorRT version is refused with a message saying where to rebuild it.

- Shapes: every input shape is checked against the engine's optimization profile 0 before timing
  (`check_feed`), and `set_input_shape`'s answer is checked on every query: outside the profile
  TensorRT refuses the shape and would otherwise run the old one.
- Waiting: blocking-sync events by default, so the host thread sleeps until the GPU is done (trtexec's
  default); `spin_wait` uses plain events, on which cuEventSynchronize spins in the driver, without
  the GIL (trtexec's --useSpinWait).
- Threads: pycuda's context stack is per thread; `in_thread` makes the context current in another
  thread (concurrent runs), as trtexec sets the device in every inference thread.
- CUDA graphs (`cuda_graph=True`) capture the engine's enqueue only, as trtexec's --useCudaGraph
  does: the copies stay outside, so the split is measured the same way with and without graphs. A
  graph bakes in the device addresses it was captured with, so every graph is destroyed when a buffer
  is reallocated. A capture that fails (an engine with operations a graph cannot hold) warns, clears
  the CUDA error and enqueues that shape normally, as trtexec does.
- GPU compute (`time_compute`, what latency tables time): inputs copied to the device once, each
  launch between two events, outputs left on the device, as trtexec's "GPU Compute Time".
- Profiling attaches TensorRT's IProfiler to the one execution context after a warm-up (trtexec's
  --separateProfileRun): TensorRT 8.5 gives each execution context in concurrent use its own
  optimization profile, and a dynamic engine built by edgekit has one.
"""

import contextlib
import os
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np

from ...errors import EdgekitError
from ...lazy import lazy_import
from ..engine.api import cudart, trt
from .base import Runner, TensorSpec

Shape = Tuple[int, ...]


def cudart_module() -> Any:
    """cuda-python's runtime API: `cuda.bindings.runtime` (12.6+; the only one in 13, which removed
    the `cuda.cudart` trampoline), else `cuda.cudart` (11.x, JetPack 5)."""
    return cudart.resolve()  # type: ignore[attr-defined]  # the lazy handle's own method


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


def layer_profiler(times: Dict[str, List[float]]) -> "trt.IProfiler":
    """An IProfiler that appends each layer's milliseconds to `times` (TensorRT calls it per layer)."""

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            times.setdefault(layer_name, []).append(float(ms))

    return LayerTimes()


def _dims(dims: "trt.Dims") -> Shape:
    """A Dims as a tuple (Dims slices like a tuple; a fake's tuple does too)."""
    return tuple(int(d) for d in dims[:])


def _profile_range(engine: "trt.ICudaEngine", name: str, spec: TensorSpec) -> Tuple[Shape, Shape]:
    """(min, max) of `name` in optimization profile 0; the engine's own shape where it has no range."""
    shapes = [_dims(dims) for dims in engine.get_tensor_profile_shape(name, 0)]
    if len(shapes) == 3 and all(len(s) == len(spec.shape) and min(s) >= 0 for s in shapes):
        return shapes[0], shapes[2]
    static = tuple(d if isinstance(d, int) else -1 for d in spec.shape)
    return static, static


class TensorRTRunner(Runner):
    name = "tensorrt"
    split_not_applicable: Dict[str, str] = {}

    def __init__(self, engine_path: str, check_metadata: bool = True, cuda_graph: bool = False,
                 spin_wait: bool = False) -> None:
        """`cuda_graph`: capture the enqueue once per input shape and replay it (what MLPerf's Xavier
        SingleStream entry does; it removes most launch overhead at batch 1); needs cuda-python.
        `spin_wait`: wait on plain events, which spin, instead of blocking-sync ones (trtexec's --useSpinWait)."""
        super(TensorRTRunner, self).__init__()
        self.engine_path = engine_path
        self.check_metadata = check_metadata
        self.cuda_graph = cuda_graph
        self.spin_wait = spin_wait
        self._graphs: Dict[Shape, Any] = {}
        self._no_graph: Set[Shape] = set()  # shapes whose capture failed: enqueued normally
        self._inputs: List[TensorSpec] = []
        self._outputs: List[str] = []
        self._dtypes: Dict[str, np.dtype] = {}
        self._profile: Dict[str, Tuple[Shape, Shape]] = {}
        self._host: Dict[str, np.ndarray] = {}
        self._device: Dict[str, Tuple[Any, int]] = {}  # name -> (allocation, bytes)
        self._pairs: List[Tuple[Any, Any]] = []  # (start, end) events of time_compute
        self.context_cuda: Any = None
        self.cuda: Any = None

    # ------------------------------------------------------------------ lifecycle

    def activate_impl(self) -> None:
        if not os.path.isfile(self.engine_path):
            raise EdgekitError("TensorRT engine not found: {}".format(self.engine_path))
        cuda = lazy_import("pycuda.driver")
        cuda.init()
        self.cuda = cuda
        # The device's primary context (the one the CUDA runtime, cuda-python's graphs included, uses),
        # retained and made current here; deactivate pops and releases it, so nothing leaks per activation.
        self.context_cuda = cuda.Device(0).retain_primary_context()
        self.context_cuda.push()
        try:
            self._load()
        except BaseException:
            self._release()
            raise

    def _load(self) -> None:
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        meta = self._checked_metadata()
        if meta is not None and meta.get("dla_core") is not None:
            self.runtime.DLA_core = int(meta["dla_core"])
        with open(self.engine_path, "rb") as f:
            engine = self.runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise EdgekitError("TensorRT {} could not load {}: rebuild it on this device with edgekit "
                               "build-engine".format(trt.__version__, self.engine_path))
        self.engine = engine
        self.context = engine.create_execution_context()
        # trtexec's event flags: blocking-sync unless spinning (0 is CU_EVENT_DEFAULT)
        flags = 0 if self.spin_wait else self.cuda.event_flags.BLOCKING_SYNC
        self.stream = self.cuda.Stream()
        self.events = [self.cuda.Event(flags) for _ in range(4)]  # before H2D, after H2D, after compute, after D2H
        self._epoch = self.cuda.Event(flags)
        self._epoch.record(self.stream)
        self._read_tensors(engine)

    def _checked_metadata(self) -> Optional[Dict[str, Any]]:
        if not self.check_metadata:
            return None
        from ..engine.device import cuda_device
        from ..engine.metadata import check_compatible, load_metadata

        meta = load_metadata(self.engine_path)
        device = cuda_device()
        check_compatible(meta, trt.__version__, str(device["name"]), str(device["compute_capability"]),
                         int(self.runtime.num_DLA_cores), self.engine_path)
        return meta

    def _read_tensors(self, engine: "trt.ICudaEngine") -> None:
        self._inputs, self._outputs, self._profile, self._dtypes = [], [], {}, {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self._dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                spec = TensorSpec(name, self._dtypes[name], list(_dims(engine.get_tensor_shape(name))))
                self._inputs.append(spec)
                self._profile[name] = _profile_range(engine, name, spec)
            else:
                self._outputs.append(name)

    def deactivate_impl(self) -> None:
        try:
            self._drop_graphs()
            for allocation, _ in self._device.values():
                allocation.free()
            self._device.clear()
            self._host.clear()
            # CUDA objects go while their context is still current: pycuda destroys a stream or an
            # event when its last reference goes, and warns ("dead context") after the context left.
            self.stream = self._epoch = None
            self.events, self._pairs = [], []
            del self.context, self.engine, self.runtime
        finally:
            self._release()

    def _release(self) -> None:
        if self.context_cuda is not None:
            self.cuda.Context.pop()
            self.context_cuda.detach()
            self.context_cuda = None

    @contextlib.contextmanager
    def _current_here(self) -> Iterator[None]:
        self.context_cuda.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def in_thread(self) -> "contextlib.AbstractContextManager[None]":
        """The CUDA context made current in the calling thread while its work runs (pushed, then popped:
        pycuda aborts at exit on a context stack left non-empty)."""
        self._require_active()
        return self._current_here()

    def _drop_graphs(self) -> None:
        for graph_exec in self._graphs.values():
            cudart.cudaGraphExecDestroy(graph_exec)
        self._graphs.clear()
        self._no_graph.clear()

    # ------------------------------------------------------------------ shapes and buffers

    def input_specs_impl(self) -> List[TensorSpec]:
        return list(self._inputs)

    def output_names_impl(self) -> List[str]:
        return list(self._outputs)

    def check_feed(self, feed: Dict[str, np.ndarray]) -> None:
        """The base checks, then each input's shape against the engine's optimization profile 0."""
        super(TensorRTRunner, self).check_feed(feed)
        for spec in self._inputs:
            low, high = self._profile[spec.name]
            shape = tuple(feed[spec.name].shape)
            if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
                raise EdgekitError(
                    "input {} of shape {} is outside the optimization profile of {} (min {}, max {}): rebuild "
                    "it with edgekit build-engine --max-batch {} (or a static --batch), or measure batches it "
                    "takes".format(spec.name, list(shape), self.engine_path, list(low), list(high), shape[0]))

    def _buffer(self, name: str, shape: Shape, dtype: np.dtype) -> np.ndarray:
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

    def _set_shape(self, name: str, shape: Shape) -> None:
        if not self.context.set_input_shape(name, shape):
            raise EdgekitError("TensorRT refused input {} of shape {} for {} (outside its optimization profile "
                               "{} to {})".format(name, list(shape), self.engine_path,
                                                  *(list(s) for s in self._profile[name])))

    def _bind(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Set shapes and addresses, copy the feed into the page-locked inputs; return output buffers."""
        for spec in self._inputs:
            array = feed[spec.name]
            self._set_shape(spec.name, tuple(array.shape))
            np.copyto(self._buffer(spec.name, tuple(array.shape), spec.dtype), array)
        outputs = {}
        for name in self._outputs:
            shape = _dims(self.context.get_tensor_shape(name))
            if min(shape, default=0) < 0:
                raise EdgekitError("TensorRT left output {} of {} without a shape ({})".format(
                    name, self.engine_path, list(shape)))
            outputs[name] = self._buffer(name, shape, self._dtypes[name])
        # addresses last: a growing output buffer may have dropped and reallocated after an input's
        for name in [spec.name for spec in self._inputs] + self._outputs:
            self.context.set_tensor_address(name, int(self._device[name][0]))
        return outputs

    def _key(self, feed: Dict[str, np.ndarray]) -> Shape:
        return tuple(s for name in sorted(spec.name for spec in self._inputs) for s in feed[name].shape)

    # ------------------------------------------------------------------ enqueue, graphs, queries

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise EdgekitError("TensorRT failed to enqueue {}".format(self.engine_path))

    def _graph_for(self, key: Shape) -> Any:
        """This shape's graph (captured on first use: that query is a warm-up, not a timed one), or
        None where its capture failed."""
        if key in self._no_graph:
            return None
        if key not in self._graphs:
            graph_exec = self._capture()
            if graph_exec is None:
                self._no_graph.add(key)
                return None
            self._graphs[key] = graph_exec
        return self._graphs[key]

    def _capture(self) -> Any:
        # TensorRT finishes shape-dependent set-up in its first enqueue: run once before capturing.
        self._execute()
        self.stream.synchronize()
        stream = cudart.cudaStream_t(self.stream.handle)
        # Thread-local capture (as trtexec): another thread's CUDA calls neither join nor break it.
        (err,) = cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        _check(err, "cudaStreamBeginCapture")
        enqueued = self.context.execute_async_v3(self.stream.handle)
        err, graph = cudart.cudaStreamEndCapture(stream)  # always: a stream left capturing fails every later call
        captured = err == cudart.cudaError_t.cudaSuccess  # else invalidated: no graph to destroy
        graph_exec = None
        if captured:
            if enqueued:
                err, graph_exec = cudart.cudaGraphInstantiateWithFlags(graph, 0)
            cudart.cudaGraphDestroy(graph)  # the executable graph keeps what it needs
        if enqueued and captured and err == cudart.cudaError_t.cudaSuccess:
            return graph_exec
        cudart.cudaGetLastError()  # clear the capture's error, or the next enqueue reports it
        warnings.warn("CUDA graph capture failed for {} ({}): this shape is enqueued without a graph, as trtexec "
                      "does".format(self.engine_path, "TensorRT refused the enqueue" if not enqueued else err),
                      RuntimeWarning, stacklevel=2)
        return None

    def _launch(self, graph_exec: Any) -> None:
        (err,) = cudart.cudaGraphLaunch(graph_exec, cudart.cudaStream_t(self.stream.handle))
        _check(err, "cudaGraphLaunch")

    def infer_impl(self, feed: Dict[str, np.ndarray]):  # noqa: ANN201
        outputs = self._bind(feed)
        graph_exec = self._graph_for(self._key(feed)) if self.cuda_graph else None
        before_h2d, after_h2d, after_compute, after_d2h = self.events
        before_h2d.record(self.stream)
        for spec in self._inputs:
            host = self._host[spec.name][: int(np.prod(feed[spec.name].shape))]
            self.cuda.memcpy_htod_async(self._device[spec.name][0], host, self.stream)
        after_h2d.record(self.stream)
        enqueue_start = time.perf_counter()
        if graph_exec is not None:
            self._launch(graph_exec)
        else:
            self._execute()
        enqueue = time.perf_counter() - enqueue_start
        after_compute.record(self.stream)
        for name, host in outputs.items():
            self.cuda.memcpy_dtoh_async(host, self._device[name][0], self.stream)
        after_d2h.record(self.stream)
        after_d2h.synchronize()  # sleeps on blocking-sync events, spins in the driver on plain ones
        compute = after_compute.time_since(after_h2d) / 1000.0  # ms -> s
        self._split = {"enqueue": enqueue, "enqueue_start": enqueue_start,
                       "h2d": after_h2d.time_since(before_h2d) / 1000.0, "compute": compute,
                       "d2h": after_d2h.time_since(after_compute) / 1000.0,
                       "gpu_start": before_h2d.time_since(self._epoch) / 1000.0}
        return {name: host.copy() for name, host in outputs.items()}, compute

    # ------------------------------------------------------------------ device-resident timing

    def _upload(self, feed: Dict[str, np.ndarray]) -> None:
        """Bind `feed` and copy it to the device once: what follows reads device-resident inputs and
        leaves its outputs on the device."""
        self.check_feed(feed)
        self._bind(feed)
        for spec in self._inputs:
            host = self._host[spec.name][: int(np.prod(feed[spec.name].shape))]
            self.cuda.memcpy_htod_async(self._device[spec.name][0], host, self.stream)
        self.stream.synchronize()

    def _timing_pairs(self, count: int) -> List[Tuple[Any, Any]]:
        """`count` (start, end) event pairs, made once and kept until deactivate (timing needs events
        without DISABLE_TIMING; the waiting mode is the runner's)."""
        flags = 0 if self.spin_wait else self.cuda.event_flags.BLOCKING_SYNC
        while len(self._pairs) < count:
            self._pairs.append((self.cuda.Event(flags), self.cuda.Event(flags)))
        return self._pairs[:count]

    def time_compute(self, feed: Dict[str, np.ndarray], runs: int = 10, warmup: int = 3) -> List[float]:
        """Milliseconds of GPU compute of each of `runs` launches on `feed`, as trtexec's "GPU Compute
        Time": the inputs are copied to the device once, outside the timing; each launch (the CUDA graph
        where `cuda_graph`, else the enqueue) sits between two events on the stream and the outputs stay
        on the device. The launches are queued back to back and waited for once, so the host's Python
        does not stretch them; `infer` is unchanged."""
        self._require_active()
        self._upload(feed)
        graph_exec = self._graph_for(self._key(feed)) if self.cuda_graph else None
        launch = (lambda: self._launch(graph_exec)) if graph_exec is not None else self._execute
        for _ in range(max(0, warmup)):
            launch()
        pairs = self._timing_pairs(max(1, runs))
        for start, end in pairs:
            start.record(self.stream)
            launch()
            end.record(self.stream)
        pairs[-1][1].synchronize()
        return [end.time_since(start) for start, end in pairs]

    # ------------------------------------------------------------------ profile, info

    def layer_times(self, feed: Dict[str, np.ndarray], runs: int = 10, warmup: int = 3) -> Dict[str, List[float]]:
        """{TensorRT layer name: its milliseconds in each of `runs` runs} from TensorRT's IProfiler, after
        `warmup` unprofiled runs, on this runner's execution context with device-resident inputs
        (profiling slows every layer, so timed queries never carry it: the profiler is attached for
        these runs only)."""
        self._require_active()
        self._upload(feed)
        for _ in range(max(0, warmup)):
            self._execute()
            self.stream.synchronize()
        times: Dict[str, List[float]] = {}
        self.context.profiler = layer_profiler(times)
        try:
            for _ in range(max(1, runs)):
                self._execute()
                self.stream.synchronize()
        finally:
            self.context.profiler = None  # type: ignore[assignment]  # the binding takes None (setProfiler(nullptr))
        return times

    def profile_layers(self, feed: Dict[str, np.ndarray], runs: int = 10,
                       warmup: int = 3) -> Optional[List[Dict[str, object]]]:
        """`layer_times` in trtexec's --exportProfile layout."""
        return profile_report(self.layer_times(feed, runs, warmup), max(1, runs))

    def runtime_info(self) -> Dict[str, str]:
        info = {"runner": self.name, "runtime": "tensorrt", "runtime_version": trt.__version__,
                "engine": os.path.basename(self.engine_path),
                "sync": "spin-wait" if self.spin_wait else "blocking-sync"}
        if self.cuda_graph:
            info["cuda_graph"] = "on"
        return info


def _check(err: object, call: str) -> None:
    if err != cudart.cudaError_t.cudaSuccess:
        raise EdgekitError("{} failed ({}): CUDA graphs need CUDA 11.4+ (JetPack 5) and cuda-python".format(call, err))
