"""INT8 post-training quantization: one calibration on real samples, methods compared, three artifacts.

- `model.int8.qdq.onnx`: TensorRT's explicit INT8 (Q/DQ placement in `qdq`);
- `model.int8.cpu.onnx`: onnxruntime's CPU flavour (u8s8, Q/DQ format it fuses into QLinearConv);
- `calib.cache`: the same ranges in TensorRT's calibration-cache text format for implicit INT8 (what
  DLA on Xavier's TensorRT 8.5 needs, since it cannot take Q/DQ);
- `calib.ranges.json`: every method's ranges per tensor, and which one the models hold.

One pass collects histograms (`calibrate`); each method reads its ranges from them; with evaluation
batches every method's Q/DQ model is scored, and `method="best"` takes the winner. The per-layer
fallback (`sensitivity`, `fallback`) and the twin check (`twin`) work on what this writes.
"""

import os
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ....device import layout
from ....device.engine import calibcache
from ....errors import EdgekitError
from .calibrate import (
    METHODS,
    Ranges,
    calibration_ranges,
    collect_histograms,
    method_name,
    method_ranges,
    save_ranges,
)
from .evaluate import Batches, top1
from .qdq import add_residual_qdq, write_cpu, write_tensorrt
from .sensitivity import quantization_error

__all__ = ["METHODS", "add_residual_qdq", "calibration_ranges", "choose_method", "compare_methods", "quantize",
           "quantization_error", "quantize_cpu", "write_trt_calibration_cache"]

BEST = "best"


def write_trt_calibration_cache(path: str, ranges: Ranges, tensors: Iterable[str],
                                trt_version: str = "8.5.2") -> int:
    """TensorRT's calibration cache for `trt_version` (EntropyCalibration2, the calibrator DLA needs,
    whatever method found the ranges). Returns the number of tensors written."""
    return calibcache.write_calibration_cache(path, calibcache.scales_from_ranges(ranges, tensors), trt_version)


def _graph_tensors(model: Any) -> List[str]:
    """Every activation tensor in graph order (inputs first), excluding initializers."""
    init = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in init]
    for node in model.graph.node:
        names.extend(o for o in node.output if o and o not in init)
    return names


def quantize_cpu(fp32_path: str, dst: str, calibration: List[np.ndarray], method: str = "entropy",
                 input_name: str = "input", reduce_range: bool = True, per_channel: bool = True) -> str:
    """Calibrate and write the onnxruntime CPU flavour alone: the models the comparison times.

    "best" needs a val split to score methods on, which a timing model has not; it takes entropy, the
    tie-break of "best" (the ranges do not change the latency).
    """
    name = method_name("entropy" if method == BEST else method)
    ranges = method_ranges(collect_histograms(fp32_path, calibration, input_name))[name]
    return write_cpu(fp32_path, dst, ranges, per_channel, reduce_range)


def compare_methods(fp32_path: str, methods: Dict[str, Ranges], batches: Batches, per_channel: bool = True,
                    threads: Optional[int] = None) -> Dict[str, float]:
    """Top-1 of each method's TensorRT Q/DQ model on `batches`, in METHODS order."""
    scores = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-methods-") as tmp:
        for name in METHODS:
            path = os.path.join(tmp, name + ".qdq.onnx")
            write_tensorrt(fp32_path, path, methods[name], per_channel)
            scores[name] = top1(path, batches, threads)
    return scores


def choose_method(method: str, scores: Dict[str, float]) -> Tuple[str, str]:
    """(method, why): the given one, or for "best" the highest top-1, ties going to the earliest in
    METHODS, entropy first (TensorRT's DLA path calibrates with IInt8EntropyCalibrator2)."""
    if method != BEST:
        return method_name(method), "set by quantize.method"
    if not scores:
        raise EdgekitError("quantize.method best needs the methods compared on the val split; "
                           "set quantize.compare_methods: true or name a method")
    high = max(scores.values())
    tied = [m for m in METHODS if scores.get(m) == high]
    if len(tied) == 1:
        return tied[0], "highest top-1 ({:.2f}%)".format(high)
    why = ("the KL calibration TensorRT's DLA path uses (IInt8EntropyCalibrator2)" if tied[0] == "entropy"
           else "the first of them in edgekit's order of preference ({})".format(", ".join(METHODS)))
    return tied[0], "tie at {:.2f}% between {}: {} taken, {}".format(high, ", ".join(tied), tied[0], why)


def default_paths(out_dir: str) -> Dict[str, str]:
    return {"cpu": os.path.join(out_dir, layout.INT8_CPU), "qdq": os.path.join(out_dir, layout.INT8_QDQ),
            "cache": os.path.join(out_dir, layout.CALIB_CACHE), "ranges": os.path.join(out_dir, layout.CALIB_RANGES)}


def quantize(fp32_path: str, out_dir: str, calibration: List[np.ndarray], method: str = "entropy",
             trt_version: str = "8.5.2", input_name: str = "input", cpu_reduce_range: bool = True,
             per_channel: bool = True, evaluation: Optional[Batches] = None, threads: Optional[int] = None,
             paths: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Calibrate `fp32_path` on `calibration` batches once; write the INT8 artifacts (`paths`, by default
    the shipped names in `out_dir`). With `evaluation`, every method is scored and `method` may be "best"."""
    import onnx

    if method != BEST:
        method_name(method)  # an unknown method fails before any work
    paths = paths or default_paths(out_dir)
    for path in paths.values():
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    histograms = collect_histograms(fp32_path, calibration, input_name)
    methods = method_ranges(histograms)
    scores = compare_methods(fp32_path, methods, evaluation, per_channel, threads) if evaluation else {}
    chosen, why = choose_method(method, scores)
    samples = int(sum(b.shape[0] for b in calibration))
    save_ranges(paths["ranges"], methods, chosen, samples)
    ranges = methods[chosen]
    write_cpu(fp32_path, paths["cpu"], ranges, per_channel, cpu_reduce_range)
    placed = write_tensorrt(fp32_path, paths["qdq"], ranges, per_channel)
    tensors = write_trt_calibration_cache(paths["cache"], ranges, _graph_tensors(onnx.load(fp32_path)), trt_version)
    return {"paths": paths, "method": chosen, "requested": method, "why": why, "methods": scores,
            "calibration_samples": samples, "per_channel": per_channel,
            "residual_qdq_added": placed["residual_qdq_added"], "quantized_convs": placed["quantized_convs"],
            "calibrated_tensors": len(ranges), "cache_tensors": tensors}
