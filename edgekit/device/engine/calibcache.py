"""TensorRT's calibration cache (implicit INT8, as DLA needs it): its text format and its header.

Format: a header `TRT-<version tag>-<algorithm>`, then one `<tensor>: <big-endian float32 scale hex>`
line per tensor, scale = amax / 127. TensorRT skips a cache whose header names another version or
calibrator *silently* (the engine then has no INT8 scales), so every target's bundle gets a cache with
its own TensorRT's tag, and the algorithm is always EntropyCalibration2: the calibrator TensorRT names
as required for DLA, whatever method found the ranges on the host.

Python 3.8 clean and torch-free: the host writes caches, the device bundle re-tags them per target.
"""

import re
import struct
from typing import Dict, Iterable, Tuple

from ...artifacts import write_text_atomic
from ...errors import EdgekitError

DLA_ALGORITHM = "EntropyCalibration2"


def version_tag(version: str) -> str:
    """The number TensorRT writes into its cache header.

    TensorRT 8.x and 9.x: major*1000 + minor*100 + patch (8.5.2 -> 8502, 9.2.0 -> 9200: 9.1-9.3 still
    write it so); TensorRT 10 widened it to major*10000 + minor*100 + patch (10.3.0 -> 100300), matching
    its NV_TENSORRT_VERSION.
    """
    match = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(version))
    if not match:
        raise EdgekitError("cannot read TensorRT version {!r} (expected e.g. 8.5.2 or 10.3)".format(version))
    major, minor, patch = (int(g or 0) for g in match.groups())
    if major >= 10:
        return str(major * 10000 + minor * 100 + patch)
    return str(major * 1000 + minor * 100 + patch)


def header(trt_version: str, algorithm: str = DLA_ALGORITHM) -> str:
    return "TRT-{}-{}".format(version_tag(trt_version), algorithm)


def scales_from_ranges(ranges: Dict[str, Tuple[float, float]], tensors: Iterable[str]) -> Dict[str, float]:
    """{tensor: scale} in `tensors` order, scale = max(|min|, |max|) / 127 (1/127 for an all-zero tensor)."""
    scales = {}
    for name in tensors:
        if name in ranges:
            amax = max(abs(ranges[name][0]), abs(ranges[name][1]))
            scales[name] = amax / 127.0 if amax > 0 else 1.0 / 127.0
    return scales


def format_cache(scales: Dict[str, float], trt_version: str, algorithm: str = DLA_ALGORITHM) -> str:
    lines = [header(trt_version, algorithm)]
    lines += ["{}: {}".format(name, struct.pack(">f", scale).hex()) for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def write_calibration_cache(path: str, scales: Dict[str, float], trt_version: str,
                            algorithm: str = DLA_ALGORITHM) -> int:
    """Write `scales` as a cache for `trt_version`; returns the number of tensors written."""
    write_text_atomic(path, format_cache(scales, trt_version, algorithm))
    return len(scales)


def read_calibration_cache(path: str) -> Tuple[str, Dict[str, float]]:
    """(header, {tensor: scale}) from a TensorRT calibration cache, or one clear error."""
    try:
        with open(path, encoding="ascii") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError("cannot read calibration cache {}: {}".format(path, exc)) from None
    if not lines or not lines[0].startswith("TRT-"):
        raise EdgekitError("{} is not a TensorRT calibration cache (no TRT-<version>-<algorithm> header)".format(path))
    scales = {}
    for number, line in enumerate(lines[1:], 2):
        name, _, value = line.rpartition(": ")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
        except (ValueError, struct.error):
            raise EdgekitError("{} line {}: expected '<tensor>: <8 hex digits>', got {!r}".format(
                path, number, line)) from None
    return lines[0], scales


def retag_calibration_cache(src: str, dst: str, trt_version: str) -> str:
    """Copy a cache with the header `trt_version` reads (EntropyCalibration2); returns the new header."""
    _, scales = read_calibration_cache(src)
    write_calibration_cache(dst, scales, trt_version)
    return header(trt_version)
