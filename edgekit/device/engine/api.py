"""Where TensorRT 8.5 (Xavier, JetPack 5) and TensorRT 8.6/10.x differ, in one place, and the typed
handles every module that calls TensorRT or cuda-python uses.

A `TrtApi` describes what a TensorRT version offers; it is a pure function of the version string,
so the choices are tested on machines without TensorRT. Only the named-tensor API
(`set_tensor_address` + `execute_async_v3`, present from 8.5 and the only one in 10) is used for
inference; building always goes through `build_serialized_network`.

`trt` and `cudart` are the modules themselves to a type checker (mypy reads tensorrt-stubs 10.13 and
stubs generated from cuda-python's bindings: `make typecheck`), and lazy handles at run time (imported
on first use: the device side imports neither until something runs). Every TensorRT call is therefore
checked against the stubs. A name that exists only in TensorRT 8.5 has no stub: it is used here and
only here, in a function marked with the version it is for (`ONLY_IN_8_5` lists them), so the rest of
the code reads as the API of today.
"""

import re
from typing import TYPE_CHECKING, Dict, Optional, Tuple

from ...errors import EdgekitError
from ...lazy import LazyModule

if TYPE_CHECKING:
    import tensorrt as trt
    from cuda.bindings import runtime as cudart
else:
    trt = LazyModule("tensorrt")
    # cuda-python 12.6+ (and 13, which removed the old trampoline), else 11.x as JetPack 5 ships it
    cudart = LazyModule("cuda.bindings.runtime", "cuda.cudart")

# TensorRT 8.5 names edgekit touches that TensorRT 10's API (and so its stubs) no longer has:
# name -> why it is still needed. Empty today: 8.5's named-tensor and builder APIs are all in 10.x.
ONLY_IN_8_5: Dict[str, str] = {}

MIN_VERSION = (8, 5)


def tensorrt_available() -> Optional[str]:
    """TensorRT's version when it imports here, else None."""
    try:
        return str(trt.__version__)
    except EdgekitError:
        return None


def parse_version(text: str) -> Tuple[int, int, int]:
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        raise EdgekitError("cannot read TensorRT version {!r}".format(text))
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


class TrtApi(object):
    def __init__(self, version: str) -> None:
        self.version = version
        self.v = parse_version(version)
        if self.v[:2] < MIN_VERSION:
            raise EdgekitError("TensorRT {} is too old: edgekit needs 8.5 or newer (named-tensor API); "
                               "JetPack 5.1 ships 8.5.2".format(version))

    @property
    def explicit_batch_flag(self) -> bool:
        """8.x needs EXPLICIT_BATCH at network creation; 10 has only explicit batch and deprecates the flag."""
        return self.v[0] < 10

    @property
    def memory_pool_limit(self) -> bool:
        """`config.set_memory_pool_limit(WORKSPACE, n)` (8.4+) instead of `max_workspace_size`."""
        return self.v[:2] >= (8, 4)

    @property
    def builder_optimization_level(self) -> bool:
        """`config.builder_optimization_level` appeared in 8.6."""
        return self.v[:2] >= (8, 6)

    @property
    def aux_streams(self) -> bool:
        """`config.max_aux_streams` appeared in 8.6: from then TensorRT may run independent branches of
        a network on auxiliary streams, at the same time; 8.5 runs every layer on the enqueue's stream."""
        return self.v[:2] >= (8, 6)

    @property
    def parser_error_node_name(self) -> bool:
        """`IParserError.node_name()` appeared in 9.1 (not 8.6: JetPack 6.0's 8.6.2 lacks it);
        8.5 and 8.6 have only the node index (`node()`)."""
        return self.v[:2] >= (9, 1)

    @property
    def implicit_int8_deprecated(self) -> bool:
        """Calibrator-based (implicit) INT8 is deprecated from 10.1 in favour of Q/DQ."""
        return self.v[:2] >= (10, 1)

    @property
    def version_tag(self) -> str:
        """The number TensorRT writes into calibration caches: 8.5.2 -> 8502, 9.2.0 -> 9200, 10.3.0 -> 100300."""
        from .calibcache import version_tag

        return version_tag(self.version)

    def network_flags(self) -> int:
        """create_network's flags: 8.x needs EXPLICIT_BATCH; 10 is explicit batch only (the flag is
        deprecated there and ignored)."""
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if self.explicit_batch_flag else 0

    def describe(self) -> dict:
        return {"version": self.version, "explicit_batch_flag": self.explicit_batch_flag,
                "memory_pool_limit": self.memory_pool_limit,
                "builder_optimization_level": self.builder_optimization_level, "aux_streams": self.aux_streams,
                "parser_error_node_name": self.parser_error_node_name,
                "implicit_int8_deprecated": self.implicit_int8_deprecated}
