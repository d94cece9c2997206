"""A strict fake of pycuda.driver and of cuda-python's runtime API, laid out as their Python APIs, over
one simulated device. It refuses what the real ones refuse, so a test cannot pass on a crash:

- pycuda's context stack is per thread (pycuda's cuda.hpp keeps it in a thread_specific_ptr): every
  CUDA call fails with "invalid device context" in a thread that has not pushed a context;
- copies, kernels and event records are queued on their stream and run later, in order, on the device:
  a host buffer copied to the device is read when the copy runs, an output lands in host memory only
  when its copy has run; `Event.query()` and `Stream.is_done()` are False until the work before them
  has run (each call lets the device run one more piece of work), `time_since` fails on an event that
  has not happened yet, and on events made with DISABLE_TIMING;
- device memory is a dict keyed by address: reading a freed allocation raises FreedMemory;
- a stream or event destroyed after its context was released is recorded, as pycuda warns about it;
- the exit check (`World.exit_problems`) reports every thread whose context stack was not empty (pycuda
  calls abort() at exit in that case), contexts never detached, graphs never destroyed;
- stream capture (cuda-python): work enqueued on a capturing stream is recorded, not run; an enqueue
  that fails during capture invalidates it, and the error it leaves is reported by the next CUDA call
  that checks for errors (TensorRT's enqueue does) until `cudaGetLastError` clears it.

The device runs serially on a simulated clock: H2D copies 0.1 ms, D2H copies 0.2 ms, an engine's
enqueue 1 ms (see fake_trt), so the runner's event split is exact.
"""

import enum
import itertools
import threading
import types
import weakref

import numpy as np


class FreedMemory(AssertionError):
    pass


class World(object):
    """The simulated device and everything the fakes share, so a test can look at it."""

    def __init__(self) -> None:
        self.memory = {}          # address -> np.ndarray of uint8 (live allocations)
        self.freed = set()
        self.addresses = itertools.count(0x1000, 0x1000)
        self.clock_ms = 0.0
        self.stacks = {}          # thread ident -> (thread name, [contexts]): pycuda's per-thread stacks
        self.lock = threading.RLock()
        self.streams = weakref.WeakValueDictionary()  # handle -> Stream (live)
        self.handles = itertools.count(0x10)
        self.alive = {"stream": 0, "event": 0, "graph_exec": 0}
        self.dead_context_cleanups = []
        self.primary = None
        self.capturing = {}       # stream handle -> Capture
        self.capture_modes = []
        self.last_error = 0       # cudaError_t of the last failed runtime call, until cudaGetLastError
        self.launches = 0
        self.calls = []           # notable calls, in order, for tests that look at how the code waited
        self.initialized = False

    # -- contexts
    def stack(self):  # noqa: ANN201
        ident = threading.get_ident()
        with self.lock:
            if ident not in self.stacks:
                self.stacks[ident] = (threading.current_thread().name, [])
            return self.stacks[ident][1]

    def require_context(self, call: str) -> None:
        stack = self.stack()
        if not stack or not stack[-1].valid:
            raise LogicError("{} failed: invalid device context (no context is current in thread {})".format(
                call, threading.current_thread().name))

    def exit_problems(self):  # noqa: ANN201
        problems = []
        for name, stack in self.stacks.values():
            if stack:
                problems.append("PyCUDA ERROR: the context stack of thread {} was not empty at exit "
                                "(pycuda aborts)".format(name))
        if self.primary is not None and self.primary.refs > 0:
            problems.append("the primary context was retained {} time(s) more than detached".format(self.primary.refs))
        problems += ["{} destroyed after its context was released".format(what) for what in self.dead_context_cleanups]
        if self.alive["graph_exec"]:
            problems.append("{} CUDA graph exec(s) never destroyed".format(self.alive["graph_exec"]))
        return problems

    # -- memory
    def read(self, address: int) -> np.ndarray:
        if address in self.freed:
            raise FreedMemory("read of freed device memory at {:#x}".format(address))
        if address not in self.memory:
            raise LogicError("invalid device pointer {:#x}".format(address))
        return self.memory[address]

    # -- the device
    def stream_for(self, handle: int):  # noqa: ANN201
        if handle == 0:
            return self.null_stream
        stream = self.streams.get(handle)
        if stream is None:
            raise LogicError("invalid stream handle {:#x}".format(handle))
        return stream

    def enqueue(self, handle: int, op, duration_ms: float, what: str) -> None:  # noqa: ANN001
        """Queue `op` on a stream, or record it into the stream's capture."""
        capture = self.capturing.get(handle)
        if capture is not None:
            capture.ops.append((op, duration_ms, what))
            return
        self.stream_for(handle).queue.append((op, duration_ms, what))

    def run_one(self, stream) -> bool:  # noqa: ANN001
        if not stream.queue:
            return False
        op, duration_ms, _ = stream.queue.pop(0)
        self.clock_ms += duration_ms
        op()
        return True


class LogicError(RuntimeError):
    """pycuda._driver.LogicError (and cuda-python's failing calls)."""


# --------------------------------------------------------------------------- pycuda.driver

def pycuda_driver(world: World) -> types.ModuleType:
    driver = types.ModuleType("pycuda.driver")
    driver.Error = driver.LogicError = LogicError

    class event_flags(object):  # noqa: N801 - pycuda's spelling; CU_EVENT_* values
        DEFAULT, BLOCKING_SYNC, DISABLE_TIMING, INTERPROCESS = 0, 1, 2, 4

    class Context(object):
        def __init__(self) -> None:
            self.refs = 1
            self.valid = True

        def push(self) -> None:
            if not self.valid:
                raise LogicError("cuCtxPushCurrent failed: invalid context")
            world.stack().append(self)

        @staticmethod
        def pop() -> None:
            stack = world.stack()
            if not stack:
                raise LogicError("context::pop failed: cannot pop non-current context")
            stack.pop()

        @staticmethod
        def get_current():  # noqa: ANN205
            stack = world.stack()
            return stack[-1] if stack else None

        @staticmethod
        def synchronize() -> None:
            world.require_context("cuCtxSynchronize")
            for stream in [world.null_stream] + list(world.streams.values()):
                while world.run_one(stream):
                    pass

        def detach(self) -> None:
            if not self.valid:
                raise LogicError("context::detach failed: cannot detach from invalid context")
            self.refs -= 1
            if self.refs == 0:
                self.valid = False

    class Device(object):
        def __init__(self, index: int) -> None:
            if not world.initialized:
                raise LogicError("cuInit has not been called (pycuda.driver.init())")
            if index != 0:
                raise LogicError("cuDeviceGet failed: invalid device ordinal")
            self.index = index

        @staticmethod
        def count() -> int:
            return 1

        def retain_primary_context(self):  # noqa: ANN201
            if world.primary is None or not world.primary.valid:
                world.primary = Context()
            else:
                world.primary.refs += 1
            return world.primary

        def name(self) -> str:
            return "Xavier"

        def compute_capability(self):  # noqa: ANN201
            return 7, 2

    class ContextBound(object):
        """What pycuda calls context_dependent: made in a context, destroyed in it."""

        kind = "object"

        def __init__(self) -> None:
            world.require_context("cu{}Create".format(self.kind.capitalize()))
            self._context = world.stack()[-1]
            world.alive[self.kind] += 1

        def __del__(self) -> None:
            world.alive[self.kind] -= 1
            if not self._context.valid:
                world.dead_context_cleanups.append("a {}".format(self.kind))

    class Stream(ContextBound):
        kind = "stream"

        def __init__(self, flags: int = 0) -> None:
            super(Stream, self).__init__()
            self.handle = next(world.handles)
            self.queue = []
            world.streams[self.handle] = self

        def synchronize(self) -> None:
            world.require_context("cuStreamSynchronize")
            world.calls.append("stream.synchronize")
            while world.run_one(self):
                pass

        def is_done(self) -> bool:
            world.require_context("cuStreamQuery")
            world.run_one(self)
            return not self.queue

        def __del__(self) -> None:
            world.streams.pop(self.handle, None)
            super(Stream, self).__del__()

    class NullStream(object):
        handle = 0

        def __init__(self) -> None:
            self.queue = []

    world.null_stream = NullStream()

    class Event(ContextBound):
        kind = "event"

        def __init__(self, flags: int = 0) -> None:
            super(Event, self).__init__()
            self.flags = flags
            self.at = None
            self.handle = None  # of the stream it was last recorded on (a handle: the device holds no object)
            self.pending = 0  # records of this event not yet run

        def record(self, stream=None):  # noqa: ANN001, ANN201
            world.require_context("cuEventRecord")
            self.handle = stream.handle if stream is not None else 0
            self.pending += 1

            def happen() -> None:
                self.at = world.clock_ms
                self.pending -= 1

            world.enqueue(self.handle, happen, 0.0, "event")
            return self

        def synchronize(self):  # noqa: ANN201
            world.require_context("cuEventSynchronize")
            world.calls.append("event.synchronize:{}".format("blocking" if self.flags & event_flags.BLOCKING_SYNC
                                                               else "spin"))
            while self.pending and world.run_one(world.stream_for(self.handle)):
                pass
            return self

        def query(self) -> bool:
            world.require_context("cuEventQuery")
            world.calls.append("event.query")
            if self.pending:
                world.run_one(world.stream_for(self.handle))
            return self.pending == 0

        def time_since(self, other) -> float:  # noqa: ANN001
            world.require_context("cuEventElapsedTime")
            if (self.flags | other.flags) & event_flags.DISABLE_TIMING:
                raise LogicError("cuEventElapsedTime failed: invalid resource handle (an event without timing)")
            if self.pending or other.pending or self.at is None or other.at is None:
                raise LogicError("cuEventElapsedTime failed: device not ready")
            return self.at - other.at

    class DeviceAllocation(object):
        def __init__(self, nbytes: int) -> None:
            world.require_context("cuMemAlloc")
            self.address = next(world.addresses)
            world.memory[self.address] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            world.require_context("cuMemFree")
            world.freed.add(self.address)
            del world.memory[self.address]

    def pagelocked_empty(shape, dtype):  # noqa: ANN001, ANN202
        world.require_context("cuMemHostAlloc")
        return np.empty(shape, dtype)

    def memcpy_htod_async(dest, src, stream=None):  # noqa: ANN001, ANN202
        world.require_context("cuMemcpyHtoDAsync")
        target = world.read(int(dest))

        def copy() -> None:  # reads the host buffer when the copy runs, as the DMA engine does
            raw = np.ascontiguousarray(src).view(np.uint8).ravel()
            world.read(int(dest))[: raw.size] = raw

        if np.asarray(src).nbytes > target.size:
            raise LogicError("cuMemcpyHtoDAsync failed: invalid argument (copy larger than the allocation)")
        world.enqueue(stream.handle if stream is not None else 0, copy, 0.1, "h2d")

    def memcpy_dtoh_async(dest, src, stream=None):  # noqa: ANN001, ANN202
        world.require_context("cuMemcpyDtoHAsync")
        world.read(int(src))

        def copy() -> None:
            raw = dest.view(np.uint8).ravel()
            raw[:] = world.read(int(src))[: raw.size]

        world.enqueue(stream.handle if stream is not None else 0, copy, 0.2, "d2h")

    def init(flags: int = 0) -> None:
        world.initialized = True

    driver.init = init
    driver.event_flags = event_flags
    driver.Context, driver.Device, driver.Stream, driver.Event = Context, Device, Stream, Event
    driver.mem_alloc = DeviceAllocation
    driver.pagelocked_empty = pagelocked_empty
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return driver


# --------------------------------------------------------------------------- cuda-python runtime

class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's spelling and values
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class Capture(object):
    def __init__(self, mode) -> None:  # noqa: ANN001
        self.mode = mode
        self.ops = []
        self.invalid = False


def cuda_runtime(world: World) -> types.ModuleType:
    rt = types.ModuleType("cudart")
    rt.cudaError_t, rt.cudaStreamCaptureMode = cudaError_t, cudaStreamCaptureMode

    class cudaStream_t(object):  # noqa: N801
        def __init__(self, handle: int = 0) -> None:
            self.handle = int(handle)

        def __int__(self) -> int:
            return self.handle

    class Graph(object):
        def __init__(self, ops) -> None:  # noqa: ANN001
            self.ops = list(ops)
            self.alive = True

    def fail(err: cudaError_t):  # noqa: ANN202
        world.last_error = err
        return err

    def begin(stream, mode):  # noqa: ANN001, ANN202
        world.require_context("cudaStreamBeginCapture")
        if not isinstance(mode, cudaStreamCaptureMode):
            raise TypeError("mode must be a cudaStreamCaptureMode, got {!r}".format(mode))
        if int(stream) == 0 or int(stream) in world.capturing:
            return (fail(cudaError_t.cudaErrorStreamCaptureUnsupported),)
        world.stream_for(int(stream))
        world.capture_modes.append(mode)
        world.capturing[int(stream)] = Capture(mode)
        return (cudaError_t.cudaSuccess,)

    def end(stream):  # noqa: ANN001, ANN202
        world.require_context("cudaStreamEndCapture")
        capture = world.capturing.pop(int(stream), None)
        if capture is None:
            return fail(cudaError_t.cudaErrorInvalidValue), None
        if capture.invalid:
            return fail(cudaError_t.cudaErrorStreamCaptureInvalidated), None
        return cudaError_t.cudaSuccess, Graph(capture.ops)

    def instantiate(graph, flags):  # noqa: ANN001, ANN202
        world.require_context("cudaGraphInstantiateWithFlags")
        if not isinstance(graph, Graph) or not graph.alive:
            return fail(cudaError_t.cudaErrorInvalidValue), None
        world.alive["graph_exec"] += 1
        return cudaError_t.cudaSuccess, Graph(graph.ops)

    def launch(graph_exec, stream):  # noqa: ANN001, ANN202
        world.require_context("cudaGraphLaunch")
        if not isinstance(graph_exec, Graph) or not graph_exec.alive:
            return (fail(cudaError_t.cudaErrorInvalidValue),)
        world.launches += 1
        for op, duration_ms, what in graph_exec.ops:
            world.enqueue(int(stream), op, duration_ms, what)
        return (cudaError_t.cudaSuccess,)

    def destroy(graph):  # noqa: ANN001, ANN202
        if not isinstance(graph, Graph) or not graph.alive:
            return (fail(cudaError_t.cudaErrorInvalidValue),)
        graph.alive = False
        return (cudaError_t.cudaSuccess,)

    def destroy_exec(graph_exec):  # noqa: ANN001, ANN202
        world.require_context("cudaGraphExecDestroy")
        code = destroy(graph_exec)
        if code[0] == cudaError_t.cudaSuccess:
            world.alive["graph_exec"] -= 1
        return code

    def get_last_error():  # noqa: ANN202
        err, world.last_error = world.last_error, cudaError_t.cudaSuccess
        return (cudaError_t(err),)

    rt.cudaStream_t = cudaStream_t
    rt.cudaStreamBeginCapture, rt.cudaStreamEndCapture = begin, end
    rt.cudaGraphInstantiateWithFlags, rt.cudaGraphLaunch = instantiate, launch
    rt.cudaGraphDestroy, rt.cudaGraphExecDestroy = destroy, destroy_exec
    rt.cudaGetLastError = get_last_error
    return rt
