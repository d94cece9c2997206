"""A strict fake of TensorRT 8.5's Python API (with the strict fakes of pycuda and cuda-python in
fake_cuda.py), so the TensorRT runner is tested on a machine without a GPU against the rules the real
library enforces:

- an engine has a real optimization profile (min/opt/max per input, `get_tensor_profile_shape`);
  `set_input_shape` returns False outside it, for an unknown name or a wrong rank;
- one optimization profile per execution context in concurrent use (NvInferRuntime.h, 8.5): the first
  context takes profile 0; another one made while it lives has no profile, refuses shapes and
  enqueues, and cannot take profile 0 with `set_optimization_profile_async`;
- an enqueue needs a current CUDA context, every input shape, live device addresses for every tensor,
  and no CUDA error left pending from earlier work; it runs asynchronously on its stream;
- enums are enum.Enum: an unknown name raises, and their members compare equal to nothing else;
- a subclass of IProfiler must call IProfiler.__init__ (pybind11 refuses it otherwise); the profiler
  is called at each enqueue (`enqueue_emits_profile`), with a context's first run of a shape ten times
  slower (kernel selection and caches), as a cold run is;
- every name the fake offers exists in tensorrt-stubs (tests/test_trt_fakes.py holds it to that).

The engine: input "input" (batch, 4) float32 -> output "logits" (batch, 2) = [sum of the row, 2 x row 0].
"""

import enum
import sys
import types

import numpy as np
import pytest
from fake_cuda import World, cuda_runtime, pycuda_driver

DEFAULT_PROFILE = ((1, 4), (4, 4), (8, 4))  # min, opt, max of "input"
STEADY_LAYERS = (("conv", 0.75), ("relu", 0.05), ("fc", 0.2))


def install(monkeypatch, version="8.5.2.2", dla_cores=2, cudart_path="cuda.bindings.runtime",
            profile=DEFAULT_PROFILE):
    """Put fake `tensorrt`, `pycuda.driver` and cuda-python (at `cudart_path`) into sys.modules."""
    world = World()
    world.builders = 0
    world.fail_enqueue_while_capturing = False
    world.log = []
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_module(world, version, dla_cores, profile))
    driver = pycuda_driver(world)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    if cudart_path:
        parts = cudart_path.split(".")
        for i in range(1, len(parts)):
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        monkeypatch.setitem(sys.modules, cudart_path, cuda_runtime(world))
    return world


@pytest.fixture()
def fake_gpu(monkeypatch):
    """`fake_gpu(**install options)` -> World; after the test, the exit check pycuda makes (an abort there)."""
    worlds = []

    def make(**options):  # noqa: ANN202
        worlds.append(install(monkeypatch, **options))
        return worlds[-1]

    yield make
    import gc

    gc.collect()  # streams and events are destroyed when their last reference goes
    for world in worlds:
        problems = world.exit_problems()
        assert problems == [], problems


# --------------------------------------------------------------------------- tensorrt

def tensorrt_module(world, version, dla_cores, profile):  # noqa: ANN001, ANN201, C901 - one fake module
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    severity = enum.Enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

    class ILogger(object):
        Severity = severity
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (severity.INTERNAL_ERROR, severity.ERROR, severity.WARNING,
                                                          severity.INFO, severity.VERBOSE)

        def __init__(self) -> None:
            pass

    class Logger(ILogger):
        def __init__(self, min_severity=severity.WARNING) -> None:  # noqa: ANN001
            if not isinstance(min_severity, severity):
                raise TypeError("Logger(): incompatible arguments: {!r} is not a Logger.Severity".format(min_severity))
            self.min_severity = min_severity

        def log(self, severity, msg) -> None:  # noqa: ANN001
            world.log.append((severity, msg))

    class TensorIOMode(enum.Enum):
        NONE, INPUT, OUTPUT = range(3)

    class DataType(enum.Enum):
        FLOAT, HALF, INT8, INT32, BOOL = range(5)

    numpy_types = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
                   DataType.INT32: np.int32, DataType.BOOL: np.bool_}

    def nptype(trt_type):  # noqa: ANN001, ANN202
        if trt_type not in numpy_types:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype: {!r}".format(
                trt_type))
        return numpy_types[trt_type]

    class IProfiler(object):
        def __init__(self) -> None:
            self._initialized = True

    def report(context, shape) -> None:  # noqa: ANN001
        profiler = context._profiler
        if profiler is None:
            return
        if not getattr(profiler, "_initialized", False):
            raise TypeError("IProfiler.__init__() must be called when overriding __init__")
        cold = 10.0 if shape not in context._warm else 1.0
        for layer, ms in STEADY_LAYERS:
            profiler.report_layer_time(layer, ms * cold)

    def error(message: str) -> bool:
        world.log.append((severity.ERROR, message))
        return False

    class IExecutionContext(object):
        def __init__(self, engine) -> None:  # noqa: ANN001
            self._engine = engine
            self._shapes = {}
            self._addresses = {}
            self._profiler = None
            self._warm = set()
            self._profile = 0 if 0 not in engine._profiles_in_use else -1
            if self._profile == 0:
                engine._profiles_in_use[0] = self

        def __del__(self) -> None:
            if self._engine._profiles_in_use.get(self._profile) is self:
                del self._engine._profiles_in_use[self._profile]

        @property
        def active_optimization_profile(self) -> int:
            return self._profile

        def set_optimization_profile_async(self, profile_index, stream_handle) -> bool:  # noqa: ANN001
            holder = self._engine._profiles_in_use.get(profile_index)
            if profile_index != 0 or (holder is not None and holder is not self):
                return error("profile {} is in use by another execution context".format(profile_index))
            self._profile = 0
            self._engine._profiles_in_use[0] = self
            return True

        @property
        def profiler(self):  # noqa: ANN201
            return self._profiler

        @profiler.setter
        def profiler(self, value) -> None:  # noqa: ANN001
            if value is not None and not isinstance(value, IProfiler):
                raise TypeError("profiler must be an IProfiler")
            self._profiler = value

        def set_input_shape(self, name, shape) -> bool:  # noqa: ANN001
            shape = tuple(int(d) for d in shape)
            if self._profile < 0:
                return error("no optimization profile is set on this execution context")
            if name != "input":
                return error("{} is not an input".format(name))
            low, _, high = profile
            if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
                return error("shape {} of {} is outside profile 0 ({} to {})".format(shape, name, low, high))
            self._shapes[name] = shape
            return True

        def get_tensor_shape(self, name):  # noqa: ANN001, ANN201
            batch = self._shapes.get("input", (-1,))[0]
            return (batch, 4) if name == "input" else (batch, 2)

        def set_tensor_address(self, name, memory) -> bool:  # noqa: ANN001
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle) -> bool:  # noqa: ANN001
            world.require_context("IExecutionContext::enqueueV3")
            if world.last_error:
                return error("an earlier CUDA error is pending ({!r}): clear it with cudaGetLastError".format(
                    world.last_error))
            if self._profile < 0:
                return error("no optimization profile is set on this execution context")
            if "input" not in self._shapes or set(self._addresses) != {"input", "logits"}:
                return error("input shapes or tensor addresses are not all set")
            capture = world.capturing.get(int(stream_handle))
            if capture is not None and world.fail_enqueue_while_capturing:
                capture.invalid = True
                world.last_error = 901  # cudaErrorStreamCaptureInvalidated
                return error("an operation of this engine is not permitted while the stream is capturing")
            shape, src, dst = self._shapes["input"], self._addresses["input"], self._addresses["logits"]
            count = int(np.prod(shape))
            if world.read(src).size < count * 4 or world.read(dst).size < shape[0] * 2 * 4:
                return error("a tensor's device buffer is smaller than its shape")

            def run() -> None:
                x = world.read(src)[: count * 4].view(np.float32).reshape(shape)
                y = np.stack([x.sum(1), 2 * x[:, 0]], 1).astype(np.float32)
                world.read(dst)[: y.nbytes] = y.view(np.uint8).ravel()

            world.enqueue(int(stream_handle), run, 1.0, "compute")
            if capture is None:
                report(self, shape)
                self._warm.add(shape)
            return True

    class ICudaEngine(object):
        num_io_tensors = 2
        num_optimization_profiles = 1

        def __init__(self) -> None:
            self._profiles_in_use = {}

        def get_tensor_name(self, index):  # noqa: ANN001, ANN201
            return ("input", "logits")[index]

        def get_tensor_mode(self, name):  # noqa: ANN001, ANN201
            return {"input": TensorIOMode.INPUT, "logits": TensorIOMode.OUTPUT}.get(name, TensorIOMode.NONE)

        def get_tensor_dtype(self, name):  # noqa: ANN001, ANN201
            return DataType.FLOAT

        def get_tensor_shape(self, name):  # noqa: ANN001, ANN201
            static = profile[0] == profile[2]
            batch = profile[0][0] if static else -1
            return (batch, 4) if name == "input" else (batch, 2)

        def get_tensor_profile_shape(self, name, profile_index):  # noqa: ANN001, ANN201
            if name != "input" or profile_index != 0:
                raise RuntimeError("get_tensor_profile_shape: {} has no profile {}".format(name, profile_index))
            return [tuple(dims) for dims in profile]

        def create_execution_context(self):  # noqa: ANN201
            world.require_context("ICudaEngine::createExecutionContext")
            return IExecutionContext(self)

    class Runtime(object):
        def __init__(self, logger) -> None:  # noqa: ANN001
            if not isinstance(logger, ILogger):
                raise TypeError("Runtime(): incompatible arguments: a tensorrt.ILogger is needed")
            self.num_DLA_cores = dla_cores
            self.DLA_core = -1

        def deserialize_cuda_engine(self, serialized_engine):  # noqa: ANN001, ANN201
            world.require_context("IRuntime::deserializeCudaEngine")
            return ICudaEngine() if bytes(serialized_engine).startswith(b"serialized") else None

    class Builder(object):
        def __init__(self, logger) -> None:  # noqa: ANN001
            world.builders += 1
            self.num_DLA_cores = dla_cores

    trt.Logger, trt.ILogger, trt.Runtime, trt.Builder, trt.IProfiler = Logger, ILogger, Runtime, Builder, IProfiler
    trt.ICudaEngine, trt.IExecutionContext = ICudaEngine, IExecutionContext
    trt.TensorIOMode, trt.DataType = TensorIOMode, DataType
    trt.nptype = nptype
    return trt
