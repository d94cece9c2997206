"""Top-1 measured by the runner being benchmarked, on the host's eval set (device side: no torch).

The host writes `eval.npz` (val images preprocessed as the models take them, and their labels) and
scores every exported ONNX model on exactly those images. On the device, each engine scores them
too: an INT8 engine calibrated for DLA, or an FP16 one, then carries its own accuracy instead of
borrowing its ONNX twin's, and the difference from the host's figure is recorded as a check.
"""

import os
import time
import zipfile
from typing import Dict, Optional, Tuple

import numpy as np

from ...errors import EdgekitError
from ..runtime.base import Runner, TensorSpec
from .results import TOP1_CHECK_TOLERANCE_POINTS


def load_eval_set(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images float32 NCHW, labels int) from an eval.npz; a clear error for anything else."""
    if not os.path.isfile(path):
        raise EdgekitError("eval set not found: {} (the host's `edgekit run` writes eval.npz beside the models)"
                           .format(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("images", "labels") if k not in data.files]
            if missing:
                raise EdgekitError("eval set {} has no '{}' array; re-run the host stages to write it again".format(
                    path, missing[0]))
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise EdgekitError("eval set {} is not a readable .npz ({}); copy it again".format(path, exc)) from None
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise EdgekitError("eval set {} has images {} and labels {}; expected N images (N, C, H, W) and N "
                           "labels".format(path, list(images.shape), list(labels.shape)))
    if not np.issubdtype(labels.dtype, np.integer):
        raise EdgekitError("eval set {} has {} labels; expected integers".format(path, labels.dtype.name))
    return images, labels


def feeding(runner: Runner, images: np.ndarray, batch: int = 32) -> Tuple[TensorSpec, Optional[int], int]:
    """(input spec, its static batch or None, images per inference); a clear error when the eval
    set's images do not fit the model. Called before timing, so a mismatch costs nothing."""
    specs = runner.input_specs()
    if len(specs) != 1:
        raise EdgekitError("scoring needs a model with one input, this one has {}".format(len(specs)))
    spec = specs[0]
    static = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0 else None
    step = static or max(1, batch)
    if not spec.accepts([step] + list(images.shape[1:])):
        raise EdgekitError("the eval set's images are {} but the model takes {}; was it exported from another "
                           "recipe?".format(list(images.shape[1:]), spec.shape_text()))
    return spec, static, step


def score(runner: Runner, images: np.ndarray, labels: np.ndarray, batch: int = 32) -> Dict[str, object]:
    """Top-1 of an active runner on `images`, fed `batch` at a time (a static batch is padded)."""
    spec, static, step = feeding(runner, images, batch)
    output = runner.output_names()[0]
    correct = 0
    start = time.perf_counter()
    for i in range(0, images.shape[0], step):
        chunk = images[i:i + step].astype(spec.dtype)
        real = chunk.shape[0]
        if static and real < static:
            chunk = np.concatenate([chunk, np.zeros((static - real,) + chunk.shape[1:], chunk.dtype)])
        logits = np.asarray(runner.infer({spec.name: chunk})[output])[:real]
        if logits.ndim != 2 or logits.shape[0] != real:
            raise EdgekitError("output {} has shape {}; scoring expects (batch, classes) logits".format(
                output, list(logits.shape)))
        correct += int((logits.argmax(1) == labels[i:i + real]).sum())
    return {"top1": round(100.0 * correct / images.shape[0], 3), "images": int(images.shape[0]),
            "seconds": round(time.perf_counter() - start, 3)}


def merge(accuracy: Optional[Dict[str, object]], measured: Dict[str, object],
          runtime: str) -> Dict[str, object]:
    """The result's accuracy record once this run has scored the eval set itself.

    `accuracy` is what the host's summary said (its top-1 on the full val split, `eval_top1` on
    these images, `eval_of` the split size). When the eval set is the whole split, this run's own
    figure becomes the top-1 (the host's is kept as `host_top1`); when it is a subset, the host's
    full-split figure stays the top-1 and this run's is the check beside it.
    """
    accuracy = dict(accuracy or {})
    reference = accuracy.pop("eval_top1", None)
    of = accuracy.pop("eval_of", None)
    check = dict(measured, runtime=runtime, of=of, reference_top1=reference,
                 reference_model=accuracy.get("measured_on"))
    if reference is not None:
        check["delta_points"] = round(float(measured["top1"]) - float(reference), 3)
        check["within_tolerance"] = check["delta_points"] >= -TOP1_CHECK_TOLERANCE_POINTS
    accuracy["device_check"] = check
    if "top1" not in accuracy or (of is not None and measured["images"] == of):
        if "top1" in accuracy:
            accuracy["host_top1"] = accuracy["top1"]
        accuracy["top1"] = measured["top1"]
        accuracy["runtime"] = runtime
        accuracy["measured_on"] = "this run ({}, {} images)".format(runtime, measured["images"])
    return accuracy
