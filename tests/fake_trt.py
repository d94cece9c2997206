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
import json
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
        for layer, ms in context._engine._spec.layers:
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
            spec = self._engine._spec
            if name not in spec.inputs:
                return error("{} is not an input".format(name))
            low, _, high = spec.inputs[name]
            if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
                return error("shape {} of {} is outside profile 0 ({} to {})".format(shape, name, low, high))
            self._shapes[name] = shape
            return True

        def get_tensor_shape(self, name):  # noqa: ANN001, ANN201
            return self._engine._spec.shape(name, self._shapes)

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
            spec = self._engine._spec
            if set(self._shapes) != set(spec.inputs) or set(self._addresses) != set(spec.names):
                return error("input shapes or tensor addresses are not all set")
            capture = world.capturing.get(int(stream_handle))
            if capture is not None and world.fail_enqueue_while_capturing:
                capture.invalid = True
                world.last_error = 901  # cudaErrorStreamCaptureInvalidated
                return error("an operation of this engine is not permitted while the stream is capturing")
            for name in spec.names:
                if world.read(self._addresses[name]).size < 4 * int(np.prod(spec.shape(name, self._shapes))):
                    return error("the device buffer of {} is smaller than its shape".format(name))
            shapes, addresses = dict(self._shapes), dict(self._addresses)
            world.enqueue(int(stream_handle), lambda: spec.run(world, shapes, addresses), spec.compute_ms, "compute")
            if capture is None:
                key = tuple(sorted(shapes.items()))
                report(self, key)
                self._warm.add(key)
            return True

    class ICudaEngine(object):
        num_optimization_profiles = 1

        def __init__(self, spec) -> None:  # noqa: ANN001
            self._spec = spec
            self._profiles_in_use = {}

        @property
        def num_io_tensors(self) -> int:
            return len(self._spec.names)

        def get_tensor_name(self, index):  # noqa: ANN001, ANN201
            return self._spec.names[index]

        def get_tensor_mode(self, name):  # noqa: ANN001, ANN201
            if name in self._spec.inputs:
                return TensorIOMode.INPUT
            return TensorIOMode.OUTPUT if name in self._spec.names else TensorIOMode.NONE

        def get_tensor_dtype(self, name):  # noqa: ANN001, ANN201
            return DataType.FLOAT

        def get_tensor_shape(self, name):  # noqa: ANN001, ANN201
            return self._spec.shape(name, {})

        def get_tensor_profile_shape(self, name, profile_index):  # noqa: ANN001, ANN201
            if name not in self._spec.inputs or profile_index != 0:
                raise RuntimeError("get_tensor_profile_shape: {} has no profile {}".format(name, profile_index))
            return [tuple(dims) for dims in self._spec.inputs[name]]

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
            data = bytes(serialized_engine)
            if data.startswith(BUILT):
                return ICudaEngine(BuiltEngine(json.loads(data[len(BUILT):].decode())))
            return ICudaEngine(DefaultEngine(profile)) if data.startswith(b"serialized") else None

    trt.Logger, trt.ILogger, trt.Runtime, trt.IProfiler = Logger, ILogger, Runtime, IProfiler
    trt.ICudaEngine, trt.IExecutionContext = ICudaEngine, IExecutionContext
    trt.TensorIOMode, trt.DataType = TensorIOMode, DataType
    trt.nptype = nptype
    builder_api(trt, world, version, dla_cores)
    return trt


class DefaultEngine(object):
    """input "input" (batch, 4) -> output "logits" (batch, 2) = [sum of the row, 2 x row 0], in 1 ms."""

    names = ("input", "logits")
    compute_ms = 1.0
    layers = STEADY_LAYERS

    def __init__(self, profile) -> None:  # noqa: ANN001
        self.inputs = {"input": profile}
        self.static = profile[0] == profile[2]

    def shape(self, name, shapes):  # noqa: ANN001, ANN201
        batch = shapes.get("input", (self.inputs["input"][0][0] if self.static else -1,))[0]
        return (batch, 4) if name == "input" else (batch, 2)

    def run(self, world, shapes, addresses) -> None:  # noqa: ANN001
        shape = shapes["input"]
        x = world.read(addresses["input"])[: int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
        y = np.stack([x.sum(1), 2 * x[:, 0]], 1).astype(np.float32)
        world.read(addresses["logits"])[: y.nbytes] = y.view(np.uint8).ravel()


class BuiltEngine(object):
    """An engine the fake Builder made from an ONNX model: static shapes, its layers and their times."""

    def __init__(self, data) -> None:  # noqa: ANN001
        self.inputs = {name: (tuple(shape),) * 3 for name, shape in data["inputs"]}
        self._shapes = dict((name, tuple(shape)) for name, shape in data["inputs"] + data["outputs"])
        self.names = tuple(name for name, _ in data["inputs"] + data["outputs"])
        self.layers = [(name, ms) for name, ms in data["layers"]]
        self.compute_ms = sum(ms for _, ms in self.layers)

    def shape(self, name, shapes):  # noqa: ANN001, ANN201
        return self._shapes[name]

    def run(self, world, shapes, addresses) -> None:  # noqa: ANN001
        for name in self.names:  # what a real engine reads and writes
            world.read(addresses[name])


# --------------------------------------------------------------------------- the builder

BUILT = b"serialized-built:"


def layers_of(model, fp16):  # noqa: ANN001, ANN201
    """TensorRT's layers of an ONNX model as the fake builder makes them: a Conv fused with the Add and
    Relu that follow it ("conv + add + relu", named after the ONNX nodes), other nodes alone, and under
    FP16 a reformat before each network input's consumer. Each layer's milliseconds follow its work
    (multiply-adds, elements), so every width has its own time. Layers come out sorted by name, as a
    builder orders independent branches as it likes: cell10 runs before cell2."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    layers, by_output = [], {}
    for node in model.graph.node:
        name = node.name or "node_of_" + node.output[0]
        work = int(np.prod(shapes[node.output[0]]))
        if node.op_type == "Conv":
            work *= int(np.prod(weights[node.input[1]][1:]))
        fused = next((layer for x in node.input for layer in [by_output.get(x)] if layer is not None
                      and layer["ops"][0] == "Conv" and node.op_type in ("Add", "Relu")), None)
        if fused is None:
            fused = {"names": [], "ops": [], "ms": 0.002, "inputs": []}
            layers.append(fused)
        fused["names"].append(name)
        fused["inputs"] += list(node.input)
        fused["ops"].append(node.op_type)
        fused["ms"] += 1e-6 * work
        by_output[node.output[0]] = fused
    rows = [(" + ".join(layer["names"]), layer["ms"]) for layer in layers]
    if fp16:
        for value in model.graph.input:
            consumer = next(layer for layer in layers if value.name in layer["inputs"])
            data = [x for x in consumer["inputs"] if x not in weights]
            name = "Reformatting CopyNode for Input Tensor {} to {}".format(data.index(value.name),
                                                                          " + ".join(consumer["names"]))
            rows.append((name, 0.001 + 1e-7 * int(np.prod(shapes[value.name]))))
    assert len({name for name, _ in rows}) == len(rows), "TensorRT's layer names are unique in an engine"
    return sorted(rows)


def builder_api(trt, world, version, dla_cores) -> None:  # noqa: ANN001, C901 - one fake API
    """trt.Builder, OnnxParser and the builder config, as build_engine uses them; TensorRT 8.5's
    IBuilderConfig has neither builder_optimization_level nor max_aux_streams (both 8.6)."""
    import onnx

    world.builds = []  # the ONNX model of each build_serialized_network, in order
    world.foreign_node = False  # the builder fuses the first two layers of a build across branches
    newer = tuple(int(v) for v in version.split(".")[:2]) >= (8, 6)

    class ITensor(object):
        def __init__(self, name, shape) -> None:  # noqa: ANN001
            self.name, self.shape = name, tuple(shape)

    class INetworkDefinition(object):
        def __init__(self) -> None:
            self._model = None

        @property
        def num_inputs(self) -> int:
            return len(self._inputs())

        def _inputs(self):  # noqa: ANN202
            inits = {i.name for i in self._model.graph.initializer}
            return [v for v in self._model.graph.input if v.name not in inits]

        def get_input(self, index):  # noqa: ANN001, ANN201
            value = self._inputs()[index]
            return ITensor(value.name, [d.dim_value for d in value.type.tensor_type.shape.dim])

        @property
        def num_layers(self) -> int:
            return len(self._model.graph.node)

    class OnnxParser(object):
        num_errors = 0

        def __init__(self, network, logger) -> None:  # noqa: ANN001
            self._network = network

        def parse(self, model, path=None) -> bool:  # noqa: ANN001
            self._network._model = onnx.load_from_string(bytes(model))
            return True

    class ITimingCache(object):
        def __init__(self, data) -> None:  # noqa: ANN001
            self._data = bytes(data)

        def serialize(self):  # noqa: ANN201
            return self._data + b"+"

    class IOptimizationProfile(object):
        def set_shape(self, input, min, opt, max) -> None:  # noqa: A002, ANN001 - the binding's names
            pass

    class IBuilderConfig(object):
        def __init__(self) -> None:
            object.__setattr__(self, "_flags", set())
            object.__setattr__(self, "_cache", None)

        def __setattr__(self, name, value) -> None:  # noqa: ANN001
            settable = {"profiling_verbosity", "int8_calibrator", "default_device_type", "DLA_core"}
            if newer:
                settable |= {"builder_optimization_level", "max_aux_streams"}
            if name not in settable:
                raise AttributeError("IBuilderConfig has no attribute {!r} in TensorRT {}".format(name, version))
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, pool_size) -> None:  # noqa: ANN001
            assert pool is trt.MemoryPoolType.WORKSPACE

        def set_flag(self, flag) -> None:  # noqa: ANN001
            self._flags.add(trt.BuilderFlag(flag))

        def add_optimization_profile(self, profile) -> int:  # noqa: ANN001
            return 0

        def create_timing_cache(self, serialized_timing_cache):  # noqa: ANN001, ANN201
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:  # noqa: ANN001
            object.__setattr__(self, "_cache", cache)
            return True

        def get_timing_cache(self):  # noqa: ANN201
            return self._cache

    class Builder(object):
        def __init__(self, logger) -> None:  # noqa: ANN001
            world.builders += 1
            self.num_DLA_cores = dla_cores

        def create_network(self, flags=0):  # noqa: ANN001, ANN201
            return INetworkDefinition()

        def create_builder_config(self):  # noqa: ANN201
            return IBuilderConfig()

        def create_optimization_profile(self):  # noqa: ANN201
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):  # noqa: ANN001, ANN201
            model = network._model
            world.builds.append(model)
            if newer and getattr(config, "max_aux_streams", None) != 0:
                raise AssertionError("TensorRT 8.6+ may run the branches on auxiliary streams at once")
            layers = layers_of(model, trt.BuilderFlag.FP16 in config._flags)
            if world.foreign_node and len(layers) > 1:  # Myelin took two layers of different branches
                (a, ma), (b, mb) = layers[:2]
                layers = [("{{ForeignNode[{}...{}]}}".format(a, b), ma + mb)] + layers[2:]
            inits = {i.name for i in model.graph.initializer}
            io = [[[v.name, [d.dim_value for d in v.type.tensor_type.shape.dim]] for v in values if v.name not in inits]
                  for values in (model.graph.input, model.graph.output)]
            return BUILT + json.dumps({"inputs": io[0], "outputs": io[1], "layers": layers}).encode()

    trt.Builder, trt.OnnxParser, trt.INetworkDefinition, trt.ITensor = Builder, OnnxParser, INetworkDefinition, ITensor
    trt.IBuilderConfig, trt.IOptimizationProfile, trt.ITimingCache = IBuilderConfig, IOptimizationProfile, ITimingCache
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", start=0)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY NONE DETAILED")
    trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 GPU_FALLBACK OBEY_PRECISION_CONSTRAINTS "
                                "PREFER_PRECISION_CONSTRAINTS")
    trt.DeviceType = enum.Enum("DeviceType", "GPU DLA")
