"""The runner interface (after Polygraphy's): construct cheaply, acquire in `activate`.

Public methods are fixed and wrap `*_impl` methods that each runtime provides, so checks of the
feed (names, dtypes, shapes) happen once, here, with the same clear errors for every runtime.
End-to-end time (host to host) and compute time (on the device, where the runtime can tell) are
kept apart.
"""

import contextlib
import time
from typing import ContextManager, Dict, List, Optional, Sequence, Union

import numpy as np

from ...errors import EdgekitError

Dim = Union[int, str, None]  # a symbolic or unknown dimension is a str or None


class TensorSpec(object):
    """Name, dtype and shape of one model input or output; dynamic dims are str or None."""

    def __init__(self, name: str, dtype: np.dtype, shape: Sequence[Dim]) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)

    def accepts(self, shape: Sequence[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(not isinstance(want, int) or want < 0 or want == got for want, got in zip(self.shape, shape))

    def concrete_shape(self, batch: int) -> List[int]:
        """This spec's shape with dynamic dims filled: the first by `batch`, others fail."""
        shape = []
        for i, dim in enumerate(self.shape):
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
            elif i == 0:
                shape.append(batch)
            else:
                raise EdgekitError("input {} has a dynamic dimension {} besides the batch; give the "
                                   "input shape explicitly".format(self.name, i))
        return shape

    def shape_text(self) -> str:
        return "[{}]".format(", ".join("?" if not isinstance(d, int) or d < 0 else str(d) for d in self.shape))

    def __repr__(self) -> str:
        return "{}: {}{}".format(self.name, self.dtype.name, self.shape_text())


class Runner(object):
    """Base runner. Subclasses implement `activate_impl`, `infer_impl`, `deactivate_impl`,
    `input_specs_impl` and may report device compute time from `infer_impl`."""

    name = "runner"
    # trtexec's per-query split: which parts this runtime measures, and why the others are missing
    SPLIT_PARTS = ("enqueue", "h2d", "compute", "d2h")
    split_not_applicable: Dict[str, str] = {"enqueue": "this runtime does not separate the enqueue",
                                            "h2d": "this runtime does not time the copies",
                                            "compute": "this runtime does not time the device",
                                            "d2h": "this runtime does not time the copies"}

    def __init__(self) -> None:
        self.is_active = False
        self._inference_time: Optional[float] = None
        self._compute_time: Optional[float] = None
        self._started: Optional[float] = None
        self._split: Dict[str, float] = {}

    # -- lifecycle
    def activate(self) -> "Runner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        self.deactivate()

    def in_thread(self) -> ContextManager[None]:
        """Wrap the work of a thread other than the one that activated the runner: a runtime whose
        device state is per thread (CUDA's current context) makes it current there, and undoes that at
        the end. Nothing to do for the others."""
        return contextlib.nullcontext()

    # -- metadata
    def input_specs(self) -> List[TensorSpec]:
        self._require_active()
        return self.input_specs_impl()

    def output_names(self) -> List[str]:
        self._require_active()
        return self.output_names_impl()

    def runtime_info(self) -> Dict[str, str]:
        """Runtime name, version and where it runs (for the environment record)."""
        return {"runner": self.name}

    # -- inference
    def infer(self, feed: Dict[str, np.ndarray], check: bool = True) -> Dict[str, np.ndarray]:
        """Run one inference; `feed` maps input names to arrays. Returns {output name: array}."""
        self._require_active()
        if check:
            self.check_feed(feed)
        self._split = {}
        start = time.perf_counter()
        outputs, compute = self.infer_impl(feed)
        self._inference_time = time.perf_counter() - start
        self._started = start
        self._compute_time = compute
        return outputs

    def check_feed(self, feed: Dict[str, np.ndarray]) -> None:
        specs = {s.name: s for s in self.input_specs()}
        missing = [n for n in specs if n not in feed]
        extra = [n for n in feed if n not in specs]
        if missing or extra:
            raise EdgekitError("feed does not match the model inputs: {}{}(model inputs: {})".format(
                "missing " + ", ".join(missing) + "; " if missing else "",
                "unknown " + ", ".join(extra) + "; " if extra else "",
                ", ".join(repr(s) for s in specs.values())))
        for name, array in feed.items():
            spec = specs[name]
            if not isinstance(array, np.ndarray):
                raise EdgekitError("input {} must be a numpy array, got {}".format(name, type(array).__name__))
            if array.dtype != spec.dtype:
                raise EdgekitError("input {} has dtype {}, the model expects {}".format(
                    name, array.dtype.name, spec.dtype.name))
            if not spec.accepts(array.shape):
                raise EdgekitError("input {} has shape {}, the model expects {}".format(
                    name, list(array.shape), spec.shape_text()))

    def last_inference_time(self) -> Optional[float]:
        """End-to-end seconds of the last `infer` (host feed in, host outputs out)."""
        return self._inference_time

    def last_compute_time(self) -> Optional[float]:
        """Device compute seconds of the last `infer`, or None where the runtime cannot separate it."""
        return self._compute_time

    def last_timings(self) -> Dict[str, float]:
        """The last `infer` split as trtexec splits a query, in seconds: `start` (host perf_counter),
        `end_to_end`, and those of enqueue/h2d/compute/d2h this runtime measures (`gpu_start`: the
        query's first GPU event since the runner's epoch, where there is one)."""
        out = dict(self._split)
        if self._compute_time is not None:
            out.setdefault("compute", self._compute_time)
        if self._inference_time is not None:
            out["end_to_end"] = self._inference_time
        if self._started is not None:
            out["start"] = self._started
        return out

    def profile_layers(self, feed: Dict[str, np.ndarray], runs: int = 10) -> Optional[List[Dict[str, object]]]:
        """Per-layer times in trtexec's --exportProfile layout, or None where the runtime has no profiler."""
        return None

    # -- to implement
    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def input_specs_impl(self) -> List[TensorSpec]:
        raise NotImplementedError

    def output_names_impl(self) -> List[str]:
        raise NotImplementedError

    def infer_impl(self, feed: Dict[str, np.ndarray]):  # -> (outputs, compute seconds or None)
        raise NotImplementedError

    def _require_active(self) -> None:
        if not self.is_active:
            raise EdgekitError("{} is not active: use it as `with runner:` or call activate()".format(self.name))
