"""TensorRT runner: named-tensor API (`set_tensor_address` + `execute_async_v3`), page-locked host
buffers, one CUDA stream, CUDA events around the enqueue for device compute time.

Written against TensorRT 8.5 (Xavier, JetPack 5) through 10.x; `tensorrt` and `pycuda` are
imported only in `activate`. The engine's metadata is checked first, so an engine built for
another device or TensorRT version is refused with a message saying where to rebuild it.
"""

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from ...errors import EdgekitError
from ...lazy import lazy_import
from .base import Runner, TensorSpec


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, engine_path: str, check_metadata: bool = True, cuda_graph: bool = False) -> None:
        """`cuda_graph`: capture copy-in, enqueue and copy-out once per input shape and replay them
        (what MLPerf's Xavier SingleStream entry does; it removes most launch overhead at batch 1).
        Needs cuda-python (`from cuda import cudart`) besides pycuda."""
        super(TensorRTRunner, self).__init__()
        self.engine_path = engine_path
        self.check_metadata = check_metadata
        self.cuda_graph = cuda_graph
        self._graphs: Dict[Tuple[int, ...], object] = {}
        self._inputs: List[TensorSpec] = []
        self._outputs: List[str] = []
        self._host: Dict[str, np.ndarray] = {}
        self._device: Dict[str, Tuple[object, int]] = {}  # name -> (allocation, bytes)

    def activate_impl(self) -> None:
        if not os.path.isfile(self.engine_path):
            raise EdgekitError("TensorRT engine not found: {}".format(self.engine_path))
        trt = lazy_import("tensorrt")
        cuda = lazy_import("pycuda.driver")
        cuda.init()
        self.cuda = cuda
        self.trt = trt
        self.context_cuda = cuda.Device(0).make_context()
        try:
            meta = None
            if self.check_metadata:
                from ..engine.device import cuda_device, dla_cores
                from ..engine.metadata import check_compatible, load_metadata

                meta = load_metadata(self.engine_path)
                device = cuda_device()
                check_compatible(meta, trt.__version__, str(device["name"]), str(device["compute_capability"]),
                                 dla_cores(), self.engine_path)
            self.logger = trt.Logger(trt.Logger.WARNING)
            runtime = trt.Runtime(self.logger)
            if meta is not None and meta.get("dla_core") is not None:
                runtime.DLA_core = int(meta["dla_core"])
            with open(self.engine_path, "rb") as f:
                self.engine = runtime.deserialize_cuda_engine(f.read())
            if self.engine is None:
                raise EdgekitError("TensorRT {} could not load {}: rebuild it on this device with edgekit "
                                   "build-engine".format(trt.__version__, self.engine_path))
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
            self.start, self.end = cuda.Event(), cuda.Event()
            self._inputs, self._outputs = [], []
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                    self._inputs.append(TensorSpec(name, dtype, list(self.engine.get_tensor_shape(name))))
                else:
                    self._outputs.append(name)
        except BaseException:
            self.context_cuda.pop()
            raise

    def deactivate_impl(self) -> None:
        if self._graphs:
            cudart = lazy_import("cuda.cudart")
            for graph_exec in self._graphs.values():
                cudart.cudaGraphExecDestroy(graph_exec)
            self._graphs.clear()
        for allocation, _ in self._device.values():
            allocation.free()
        self._device.clear()
        self._host.clear()
        self.context = None
        self.engine = None
        self.context_cuda.pop()

    def input_specs_impl(self) -> List[TensorSpec]:
        return list(self._inputs)

    def output_names_impl(self) -> List[str]:
        return list(self._outputs)

    def _buffer(self, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Page-locked host buffer and device allocation for `name`, grown when a bigger batch comes."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        host = self._host.get(name)
        if host is None or host.nbytes < nbytes or host.dtype != dtype:
            self._host[name] = self.cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            if name in self._device:
                self._device[name][0].free()
            self._device[name] = (self.cuda.mem_alloc(max(nbytes, 1)), nbytes)
        return self._host[name][: int(np.prod(shape))].reshape(shape)

    def _bind(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Set shapes and addresses, copy the feed into the page-locked inputs; return output buffers."""
        trt = self.trt
        for spec in self._inputs:
            array = feed[spec.name]
            self.context.set_input_shape(spec.name, array.shape)
            host = self._buffer(spec.name, array.shape, spec.dtype)
            np.copyto(host, array)
            self.context.set_tensor_address(spec.name, int(self._device[spec.name][0]))
        outputs = {}
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            outputs[name] = self._buffer(name, shape, dtype)
            self.context.set_tensor_address(name, int(self._device[name][0]))
        return outputs

    def _enqueue(self, feed: Dict[str, np.ndarray], outputs: Dict[str, np.ndarray], timed: bool = False) -> None:
        """Copy in, run, copy out: all asynchronous on the one stream; `timed` brackets the run with events."""
        for spec in self._inputs:
            host = self._host[spec.name][: int(np.prod(feed[spec.name].shape))]
            self.cuda.memcpy_htod_async(self._device[spec.name][0], host, self.stream)
        if timed:
            self.start.record(self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise EdgekitError("TensorRT failed to enqueue {}".format(self.engine_path))
        if timed:
            self.end.record(self.stream)
        for name, host in outputs.items():
            self.cuda.memcpy_dtoh_async(host, self._device[name][0], self.stream)

    def _graph_for(self, key: Tuple[int, ...], feed: Dict[str, np.ndarray], outputs: Dict[str, np.ndarray]):  # noqa: ANN202
        cudart = lazy_import("cuda.cudart")
        if key not in self._graphs:
            # TensorRT finishes shape-dependent set-up in its first enqueue: run once before capturing.
            self._enqueue(feed, outputs)
            self.stream.synchronize()
            stream = cudart.cudaStream_t(self.stream.handle)
            (err,) = cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)
            _check(err, "cudaStreamBeginCapture")
            self._enqueue(feed, outputs)
            err, graph = cudart.cudaStreamEndCapture(stream)
            _check(err, "cudaStreamEndCapture")
            err, graph_exec = cudart.cudaGraphInstantiateWithFlags(graph, 0)
            _check(err, "cudaGraphInstantiateWithFlags")
            cudart.cudaGraphDestroy(graph)
            self._graphs[key] = graph_exec
        return self._graphs[key]

    def infer_impl(self, feed: Dict[str, np.ndarray]):  # noqa: ANN201
        outputs = self._bind(feed)
        if self.cuda_graph:
            key = tuple(s for spec in self._inputs for s in feed[spec.name].shape)
            graph_exec = self._graph_for(key, feed, outputs)
            cudart = lazy_import("cuda.cudart")
            self.start.record(self.stream)
            (err,) = cudart.cudaGraphLaunch(graph_exec, cudart.cudaStream_t(self.stream.handle))
            _check(err, "cudaGraphLaunch")
            self.end.record(self.stream)
        else:
            self._enqueue(feed, outputs, timed=True)
        self.stream.synchronize()
        # Without a graph the events bracket the engine alone (compute time); a replayed graph is one
        # launch, so there they bracket copy-in + engine + copy-out.
        compute = self.end.time_since(self.start) / 1000.0  # ms -> s
        return {name: host.copy() for name, host in outputs.items()}, compute

    def runtime_info(self) -> Dict[str, str]:
        trt = lazy_import("tensorrt")
        return {"runner": self.name, "runtime": "tensorrt", "runtime_version": trt.__version__,
                "engine": os.path.basename(self.engine_path)}


def _check(err: object, call: str) -> None:
    if int(err) != 0:  # cudaSuccess
        raise EdgekitError("{} failed ({}): CUDA graphs need CUDA 11.4+ (JetPack 5) and cuda-python".format(call, err))


def tensorrt_available() -> Optional[str]:
    """TensorRT's version when it imports here, else None."""
    try:
        return lazy_import("tensorrt").__version__
    except EdgekitError:
        return None
