"""Where TensorRT 8.5 (Xavier, JetPack 5) and TensorRT 8.6/10.x differ, in one place.

A `TrtApi` describes what a TensorRT version offers; it is a pure function of the version string,
so the choices are tested on machines without TensorRT. Only the named-tensor API
(`set_tensor_address` + `execute_async_v3`, present from 8.5 and the only one in 10) is used for
inference; building always goes through `build_serialized_network`.
"""

import re
from typing import Tuple

from ...errors import EdgekitError

MIN_VERSION = (8, 5)


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
        """The number TensorRT writes into calibration caches: 8.5.2 -> 8502, 10.3.0 -> 100300."""
        from .calibcache import version_tag

        return version_tag(self.version)

    def describe(self) -> dict:
        return {"version": self.version, "explicit_batch_flag": self.explicit_batch_flag,
                "memory_pool_limit": self.memory_pool_limit,
                "builder_optimization_level": self.builder_optimization_level,
                "parser_error_node_name": self.parser_error_node_name,
                "implicit_int8_deprecated": self.implicit_int8_deprecated}
