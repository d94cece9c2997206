"""A small fake of tensorrt, pycuda.driver and cuda-python's runtime, laid out as their Python APIs,
so the TensorRT runner's bookkeeping (buffers, CUDA graphs, events, contexts, profiler) is tested on
a machine without a GPU. Device memory is a dict keyed by address; a freed allocation raises when
anything (a copy, an enqueue, a replayed graph) touches it.

The engine: input "input" (batch, 4) float32 -> output "logits" (batch, 2) = [sum of the row, 2 x row 0].
"""

import itertools
import sys
import types

import numpy as np


class FreedMemory(AssertionError):
    pass


class World(object):
    """Everything the fakes share, so a test can look at it."""

    def __init__(self) -> None:
        self.memory = {}          # address -> np.ndarray (live allocations)
        self.freed = set()
        self.addresses = itertools.count(0x1000, 0x1000)
        self.clock_ms = 0.0
        self.context_stack = []
        self.contexts_alive = 0
        self.capturing = None     # the graph being captured (a list of replayable ops), or None
        self.capture_modes = []
        self.graph_execs_alive = 0
        self.launches = []        # (graph id, input shape set on the context just before)
        self.builders = 0
        self.fail_enqueue_while_capturing = False
        self.calls = []

    def tick(self, ms: float) -> None:
        self.clock_ms += ms

    def read(self, address: int) -> np.ndarray:
        if address in self.freed:
            raise FreedMemory("read of freed device memory at {:#x}".format(address))
        return self.memory[address]


def install(monkeypatch, version="8.5.2.2", dla_cores=2, cudart_path="cuda.bindings.runtime"):
    """Put fake `tensorrt`, `pycuda.driver` and cuda-python (at `cudart_path`) into sys.modules."""
    world = World()
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt(world, version, dla_cores))
    driver = _pycuda_driver(world)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    if cudart_path:
        runtime = _cudart(world)
        parts = cudart_path.split(".")
        for i in range(1, len(parts)):
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        monkeypatch.setitem(sys.modules, cudart_path, runtime)
    return world


# --------------------------------------------------------------------------- pycuda.driver

def _pycuda_driver(world):
    driver = types.ModuleType("pycuda.driver")

    class Context(object):
        def __init__(self) -> None:
            self.refs = 1
            world.contexts_alive += 1

        def push(self) -> None:
            world.context_stack.append(self)

        @staticmethod
        def pop() -> None:
            world.context_stack.pop()

        def detach(self) -> None:
            self.refs -= 1
            if self.refs == 0:
                world.contexts_alive -= 1

    primary = {}

    class Device(object):
        def __init__(self, index: int) -> None:
            self.index = index

        def retain_primary_context(self):  # noqa: ANN201
            ctx = primary.get(self.index)
            if ctx is None or ctx.refs == 0:
                ctx = primary[self.index] = Context()
            else:
                ctx.refs += 1
            return ctx

        def make_context(self):  # noqa: ANN201 - a new context, current until popped, alive until detached
            ctx = Context()
            ctx.push()
            return ctx

        def name(self) -> str:
            return "Xavier"

        def compute_capability(self):  # noqa: ANN201
            return 7, 2

    class Allocation(object):
        def __init__(self, nbytes: int) -> None:
            self.address = next(world.addresses)
            world.memory[self.address] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            world.freed.add(self.address)
            del world.memory[self.address]

    class Stream(object):
        handle = 7

        def synchronize(self) -> None:
            world.tick(0.01)

    class Event(object):
        def __init__(self) -> None:
            self.at = None

        def record(self, stream=None) -> None:  # noqa: ANN001
            self.at = world.clock_ms

        def query(self) -> bool:
            world.calls.append("event.query")
            return True

        def time_since(self, other) -> float:  # noqa: ANN001
            return self.at - other.at

    def memcpy_htod_async(dest, src, stream=None):  # noqa: ANN001
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        world.read(int(dest))[: raw.size] = raw
        world.tick(0.1)

    def memcpy_dtoh_async(dest, src, stream=None):  # noqa: ANN001
        raw = dest.view(np.uint8).ravel()
        raw[:] = world.read(int(src))[: raw.size]
        world.tick(0.2)

    driver.init = lambda: None
    driver.Context, driver.Device, driver.Stream, driver.Event = Context, Device, Stream, Event
    driver.mem_alloc = Allocation
    driver.pagelocked_empty = lambda count, dtype: np.empty(count, dtype)
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return driver


# --------------------------------------------------------------------------- cuda-python runtime

def _cudart(world):
    rt = types.ModuleType("cudart")

    class cudaStreamCaptureMode(object):  # noqa: N801 - cuda-python's spelling
        cudaStreamCaptureModeGlobal = "global"
        cudaStreamCaptureModeThreadLocal = "thread-local"
        cudaStreamCaptureModeRelaxed = "relaxed"

    graphs = {}
    ids = itertools.count(1)

    def begin(stream, mode):  # noqa: ANN001, ANN202
        world.capture_modes.append(mode)
        world.capturing = []
        return (0,)

    def end(stream):  # noqa: ANN001, ANN202
        ops, world.capturing = world.capturing, None
        graph = next(ids)
        graphs[graph] = ops
        return 0, graph

    def instantiate(graph, flags):  # noqa: ANN001, ANN202
        world.graph_execs_alive += 1
        exec_id = next(ids)
        graphs[exec_id] = graphs[graph]
        return 0, exec_id

    def launch(exec_id, stream):  # noqa: ANN001, ANN202
        for op in graphs[exec_id]:
            op()
        return (0,)

    def destroy_exec(exec_id):  # noqa: ANN001, ANN202
        world.graph_execs_alive -= 1
        return (0,)

    rt.cudaStreamCaptureMode = cudaStreamCaptureMode
    rt.cudaStream_t = lambda handle: handle
    rt.cudaStreamBeginCapture, rt.cudaStreamEndCapture = begin, end
    rt.cudaGraphInstantiateWithFlags, rt.cudaGraphLaunch = instantiate, launch
    rt.cudaGraphDestroy = lambda graph: (0,)
    rt.cudaGraphExecDestroy = destroy_exec
    return rt


# --------------------------------------------------------------------------- tensorrt

def _tensorrt(world, version, dla_cores):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger(object):
        WARNING, ERROR = 2, 1

        def __init__(self, severity=None) -> None:  # noqa: ANN001
            pass

    class TensorIOMode(object):
        INPUT, OUTPUT = "in", "out"

    class DataType(object):
        FLOAT = "float"

    class IProfiler(object):
        def __init__(self) -> None:
            pass

    class Context(object):
        def __init__(self) -> None:
            self.shapes = {}
            self.addresses = {}
            self.profiler = None

        def set_input_shape(self, name, shape):  # noqa: ANN001, ANN201
            self.shapes[name] = tuple(shape)
            world.calls.append(("set_input_shape", tuple(shape)))
            return True

        def get_tensor_shape(self, name):  # noqa: ANN001, ANN201
            return (self.shapes["input"][0], 2)

        def set_tensor_address(self, name, address):  # noqa: ANN001, ANN201
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream):  # noqa: ANN001, ANN201
            shape = self.shapes["input"]
            src, dst = self.addresses["input"], self.addresses["logits"]

            def run() -> None:
                count = int(np.prod(shape))
                x = world.read(src)[: count * 4].view(np.float32).reshape(shape)
                y = np.stack([x.sum(1), 2 * x[:, 0]], 1).astype(np.float32)
                world.read(dst)[: y.nbytes] = y.view(np.uint8).ravel()
                world.tick(1.0)
                if self.profiler is not None:
                    for layer, ms in (("conv", 0.75), ("relu", 0.05), ("fc", 0.2)):
                        self.profiler.report_layer_time(layer, ms)

            if world.capturing is not None:
                if world.fail_enqueue_while_capturing:
                    return False
                world.capturing.append(run)
            else:
                run()
            return True

    class Engine(object):
        num_io_tensors = 2

        def get_tensor_name(self, i):  # noqa: ANN001, ANN201
            return ("input", "logits")[i]

        def get_tensor_mode(self, name):  # noqa: ANN001, ANN201
            return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):  # noqa: ANN001, ANN201
            return DataType.FLOAT

        def get_tensor_shape(self, name):  # noqa: ANN001, ANN201
            return (-1, 4) if name == "input" else (-1, 2)

        def create_execution_context(self):  # noqa: ANN201
            return Context()

    class Runtime(object):
        def __init__(self, logger) -> None:  # noqa: ANN001
            self.num_DLA_cores = dla_cores
            self.DLA_core = -1

        def deserialize_cuda_engine(self, data):  # noqa: ANN001, ANN201
            return Engine()

    class Builder(object):
        def __init__(self, logger) -> None:  # noqa: ANN001
            world.builders += 1
            self.num_DLA_cores = dla_cores

    trt.Logger, trt.Runtime, trt.Builder, trt.IProfiler = Logger, Runtime, Builder, IProfiler
    trt.TensorIOMode, trt.DataType = TensorIOMode, DataType
    trt.nptype = lambda dtype: np.float32
    return trt
