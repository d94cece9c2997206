"""One calibration pass over real samples, and every method's ranges read from it.

onnxruntime's histogram calibrator runs the FP32 model with every activation as an output and keeps,
per tensor, one histogram of |x| (2048 bins, widened by bins of the same width when larger values show
up) and the exact min and max. Every method reads that one histogram:

- minmax: the observed min and max;
- percentile-99.99, percentile-99.999: onnxruntime's own symmetric percentile of |x|;
- entropy: the amax whose 128-level quantization of the |x| distribution is nearest in KL divergence,
  TensorRT's EntropyCalibration2 algorithm. onnxruntime's entropy calibrator is not used: it works on a
  signed histogram whose default 128 bins leave it one candidate, the full range (so it is min-max), and
  with 2048 bins its Python loop takes about ten seconds per tensor. This one is vectorised over the
  candidates with cumulative sums;
- mse: the amax that minimises the expected squared error of symmetric int8 quantization (onnxruntime
  1.32 has no MSE calibrator), over the same candidates.

A range is (low, high) clamped to the observed min and max, so a ReLU output stays [0, amax]. The
ranges of every method are kept in `calib.ranges.json` (edgekit's format, below); onnxruntime's
quantizer gets them as its own TensorsData.
"""

import contextlib
import io
import json
import logging
import os
import tempfile
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Tuple

import numpy as np

from ....artifacts import write_json_atomic
from ....errors import EdgekitError

Ranges = Dict[str, Tuple[float, float]]

HISTOGRAM_BINS = 2048
ENTROPY_LEVELS = 128    # symmetric int8: 128 levels on each side of zero
FIRST_CANDIDATE = 128   # entropy and MSE try every bin edge from this one up
# In order of preference: a tie of top-1 goes to the earlier one. Entropy first because it is what
# TensorRT's DLA path calibrates with (IInt8EntropyCalibrator2); min-max last (outliers set its range).
METHODS = ("entropy", "percentile-99.999", "percentile-99.99", "mse", "minmax")
ALIASES = {"percentile": "percentile-99.999"}   # onnxruntime's default percentile
RANGES_SCHEMA = "edgekit.calibration/1"


class Histogram(NamedTuple):
    counts: np.ndarray   # of |x|, int64
    edges: np.ndarray    # len(counts) + 1, from 0
    low: float           # observed min
    high: float          # observed max


def method_name(method: str) -> str:
    """The canonical name of a calibration method, or one clear error."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise EdgekitError("unknown calibration method {!r}; choose one of {}".format(
            method, ", ".join(METHODS + tuple(ALIASES))))
    return name


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's calibrators print progress and a pre-processing tip to stdout and the root logger;
    the pipeline prints its own one line per stage instead."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _one_batch(input_name: str, batch: np.ndarray):  # noqa: ANN202
    from onnxruntime.quantization import CalibrationDataReader

    class OneBatch(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{input_name: batch.astype(np.float32)}])

        def get_next(self):  # noqa: ANN202
            return next(self.items, None)

    return OneBatch()


def collect_histograms(fp32_path: str, batches: Iterable[np.ndarray],
                       input_name: str = "input") -> Dict[str, Histogram]:
    """The |x| histogram of every float activation of `fp32_path` over `batches` (one pass).

    One `collect_data` per batch: onnxruntime stacks the outputs of the runs of one call, so memory
    stays one batch deep, and it merges each call into the histograms it keeps.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    seen = 0
    with tempfile.TemporaryDirectory(prefix="edgekit-calib-") as tmp, quiet():
        calibrator = create_calibrator(fp32_path, None, os.path.join(tmp, "augmented.onnx"),
                                       CalibrationMethod.Percentile,
                                       extra_options={"num_bins": HISTOGRAM_BINS, "symmetric": True})
        for batch in batches:
            calibrator.collect_data(_one_batch(input_name, batch))
            seen += int(batch.shape[0])
        found = calibrator.collector.histogram_dict if calibrator.collector else {}
    if not seen:
        raise EdgekitError("INT8 calibration needs at least one batch of real samples")
    return {name: Histogram(np.asarray(h[0], dtype=np.int64), np.asarray(h[1], dtype=np.float64),
                            float(h[2]), float(h[3])) for name, h in found.items()}


def _clamped(hist: Histogram, amax: float) -> Tuple[float, float]:
    return max(hist.low, -amax), min(hist.high, amax)


def entropy_amax(hist: Histogram) -> float:
    """TensorRT's entropy calibration on one |x| histogram.

    For each candidate of i bins: p is the histogram up to i with everything beyond added to its last
    bin; q is the histogram up to i merged into 128 levels and spread back evenly over each level's
    non-empty bins. The candidate with the least KL(p || q) wins. With cumulative sums every candidate
    costs O(levels), all of them at once in numpy.
    """
    counts = hist.counts.astype(np.float64)
    total = counts.sum()
    # a constant tensor (all zeros: numpy's histogram then spans [-0.5, 0.5]) has nothing to clip
    if len(counts) <= FIRST_CANDIDATE or total == 0 or hist.edges[0] < 0:
        return float(max(abs(hist.low), abs(hist.high)))
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    nonzero = np.concatenate([[0], np.cumsum(counts > 0)])
    xlogx = np.concatenate([[0.0], np.cumsum(np.where(counts > 0, counts * np.log(np.maximum(counts, 1)), 0.0))])
    i = np.arange(FIRST_CANDIDATE, len(counts) + 1)                       # candidates (bins kept)
    bounds = np.ceil(np.arange(ENTROPY_LEVELS + 1)[None, :] * i[:, None] / ENTROPY_LEVELS).astype(np.int64)
    level_sum = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]                  # C'_j: counts per level
    level_nonzero = nonzero[bounds[:, 1:]] - nonzero[bounds[:, :-1]]      # n_j: non-empty bins per level
    outliers = total - cum[i]
    last = counts[i - 1]
    # p's mass per level equals q's except the last level, which also takes the outliers
    p_level = level_sum.copy()
    p_level[:, -1] += outliers
    q_bin = np.where(level_nonzero > 0, level_sum / np.maximum(level_nonzero, 1), 1.0)
    cross = np.where(p_level > 0, p_level * np.log(np.where(p_level > 0, q_bin, 1.0)), 0.0).sum(axis=1)
    last_p = last + outliers
    p_logp = xlogx[i - 1] + np.where(last_p > 0, last_p * np.log(np.maximum(last_p, 1e-300)), 0.0)
    kl = (p_logp - cross) / total - np.log(total) + np.log(np.maximum(cum[i], 1e-300))
    kl[(last == 0) & (outliers > 0)] = np.inf     # p has mass where q has none
    return float(hist.edges[i[int(np.argmin(kl))]])


def mse_amax(hist: Histogram, chunk: int = 256) -> float:
    """The amax among the same candidates whose symmetric int8 quantization of the histogram's bin
    centres (clipped at amax, rounded to amax/127 steps) has the least count-weighted squared error."""
    counts = hist.counts.astype(np.float64)
    centres = (hist.edges[:-1] + hist.edges[1:]) / 2.0
    candidates = hist.edges[min(FIRST_CANDIDATE, len(counts)):]
    candidates = candidates[candidates > 0]
    if counts.sum() == 0 or not len(candidates) or hist.edges[0] < 0:
        return float(max(abs(hist.low), abs(hist.high)))
    errors = []
    for start in range(0, len(candidates), chunk):
        amax = candidates[start:start + chunk, None]
        scale = amax / 127.0
        quantized = np.minimum(np.round(centres[None, :] / scale), 127.0) * scale
        errors.append(((centres[None, :] - quantized) ** 2 * counts[None, :]).sum(axis=1))
    return float(candidates[int(np.argmin(np.concatenate(errors)))])


def _percentile_ranges(histograms: Dict[str, Histogram], percentile: float) -> Ranges:
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("percentile", True, HISTOGRAM_BINS, ENTROPY_LEVELS, percentile, "same")
    collector.histogram_dict = {name: (h.counts, h.edges.astype(np.float32), np.float32(h.low), np.float32(h.high))
                                for name, h in histograms.items()}
    with quiet():
        found = collector.compute_percentile()
    return {name: (float(v[0]), float(v[1])) for name, v in found.items()}


def _amax_ranges(histograms: Dict[str, Histogram], amax: Callable[[Histogram], float]) -> Ranges:
    return {name: _clamped(h, amax(h)) for name, h in histograms.items()}


def method_ranges(histograms: Dict[str, Histogram]) -> Dict[str, Ranges]:
    """Every method's (low, high) per tensor, from the one set of histograms."""
    return {"entropy": _amax_ranges(histograms, entropy_amax),
            "percentile-99.999": _percentile_ranges(histograms, 99.999),
            "percentile-99.99": _percentile_ranges(histograms, 99.99),
            "mse": _amax_ranges(histograms, mse_amax),
            "minmax": {name: (h.low, h.high) for name, h in histograms.items()}}


def save_ranges(path: str, methods: Dict[str, Ranges], chosen: str, samples: int) -> None:
    """calib.ranges.json: the chosen method's ranges (what the INT8 models and calib.cache hold) and
    every method's, per tensor as [low, high]."""
    def as_lists(ranges: Ranges) -> Dict[str, List[float]]:
        return {name: [float(lo), float(hi)] for name, (lo, hi) in ranges.items()}

    write_json_atomic(path, {"schema": RANGES_SCHEMA, "method": chosen, "samples": samples,
                             "histogram_bins": HISTOGRAM_BINS, "ranges": as_lists(methods[chosen]),
                             "methods": {m: as_lists(r) for m, r in methods.items()}})


def calibration_ranges(path: str, method: str = "") -> Ranges:
    """Tensor name -> (low, high) from calib.ranges.json: the chosen method's, or `method`'s."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read calibration ranges {}: {}".format(path, exc)) from None
    if not isinstance(data, dict) or data.get("schema") != RANGES_SCHEMA:
        raise EdgekitError("{} is not an edgekit calibration ({}); re-run the quantize stage".format(
            path, RANGES_SCHEMA))
    found = data["methods"][method_name(method)] if method else data["ranges"]
    return {name: (float(lo), float(hi)) for name, (lo, hi) in found.items()}


def write_ort_cache(path: str, ranges: Ranges) -> None:
    """`ranges` as onnxruntime's calibration cache (its own writer), for `quantize_static` to read.

    Labelled MinMax whatever method found them: quantize_static only checks that the label matches the
    method it is called with, and reads the ranges as they are.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    data = {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
