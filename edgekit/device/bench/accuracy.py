"""The model's own score, measured by the runner being benchmarked on the host's eval set (device side:
no torch). What is scored, and how, is the eval set's task (`tasks.py`: top-1 for classification).

The host writes `eval.npz` (val images preprocessed as the models take them, and the task's targets:
labels) and scores every exported ONNX model on exactly those images. On the device, each engine scores
them too: an INT8 engine calibrated for DLA, or an FP16 one, then carries its own accuracy instead of
borrowing its ONNX twin's, and the difference from the host's figure is recorded as a check.
"""

import os
import time
import zipfile
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np

from ...errors import EdgekitError
from ..runtime.base import Runner, TensorSpec
from .tasks import DEFAULT_TASK, Task, get_task


class EvalSet(NamedTuple):
    images: np.ndarray      # float32 NCHW, as the models take them
    targets: np.ndarray     # what the task scores against (classification: integer labels)
    task: Task


def load_eval_set(path: str) -> EvalSet:
    """The images, targets and task of an eval.npz (no `task` array: classification); a clear error for
    anything else."""
    if not os.path.isfile(path):
        raise EdgekitError("eval set not found: {} (the host's `edgekit run` writes eval.npz beside the models)"
                           .format(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise EdgekitError("eval set {} is not a readable .npz ({}); copy it again".format(path, exc)) from None
    if "images" not in arrays:
        raise EdgekitError("eval set {} has no 'images' array; re-run the host stages to write it again".format(path))
    images = arrays["images"]
    if images.ndim != 4 or images.shape[0] == 0:
        raise EdgekitError("eval set {} has images {}; expected N images (N, C, H, W)".format(
            path, list(images.shape)))
    task = get_task(str(arrays["task"]) if "task" in arrays else DEFAULT_TASK)
    return EvalSet(images, task.targets(arrays, path, images), task)


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


def score(runner: Runner, images: np.ndarray, targets: np.ndarray, batch: int = 32,
          task: Optional[Task] = None) -> Dict[str, object]:
    """The task's figure (default: top-1) of an active runner on `images`, fed `batch` at a time (a static
    batch is padded): {"task", "metric", <metric>: value, "images", "seconds"}."""
    task = task or get_task(DEFAULT_TASK)
    spec, static, step = feeding(runner, images, batch)
    names = runner.output_names()
    meter = task.meter()
    start = time.perf_counter()
    for i in range(0, images.shape[0], step):
        chunk = images[i:i + step].astype(spec.dtype)
        real = chunk.shape[0]
        if static and real < static:
            chunk = np.concatenate([chunk, np.zeros((static - real,) + chunk.shape[1:], chunk.dtype)])
        outputs = runner.infer({spec.name: chunk})
        meter.update({name: np.asarray(outputs[name])[:real] for name in names}, targets[i:i + real])
    return {"task": task.name, "metric": task.metric, task.metric: meter.value(), "images": int(images.shape[0]),
            "seconds": round(time.perf_counter() - start, 3)}


def merge(accuracy: Optional[Dict[str, object]], measured: Dict[str, object],
          runtime: str) -> Dict[str, object]:
    """The result's accuracy record once this run has scored the eval set itself.

    `accuracy` is what the host's summary said (its figure on the full val split, `eval_<metric>` on
    these images, `eval_of` the split size). When the eval set is the whole split, this run's own
    figure becomes the record's (the host's is kept as `host_<metric>`); when it is a subset, the host's
    full-split figure stays and this run's is the check beside it. For classification the metric is
    `top1`: `top1`, `host_top1`, `device_check.top1`, `device_check.reference_top1`.
    """
    task = get_task(str(measured["task"]))
    metric = task.metric
    accuracy = dict(accuracy or {})
    reference = accuracy.pop("eval_" + metric, None)
    of = accuracy.pop("eval_of", None)
    check = dict(measured, runtime=runtime, of=of, reference_model=accuracy.get("measured_on"))
    check["reference_" + metric] = reference
    if reference is not None:
        check["delta_points"] = round(float(measured[metric]) - float(reference), 3)  # type: ignore[arg-type]
        check["within_tolerance"] = check["delta_points"] >= -task.tolerance
    accuracy["device_check"] = check
    accuracy.setdefault("task", task.name)
    accuracy.setdefault("metric", metric)
    if metric not in accuracy or (of is not None and measured["images"] == of):
        if metric in accuracy:
            accuracy["host_" + metric] = accuracy[metric]
        accuracy[metric] = measured[metric]
        accuracy["runtime"] = runtime
        accuracy["measured_on"] = "this run ({}, {} images)".format(runtime, measured["images"])
    return accuracy


def describe(measured: Dict[str, object], check: Dict[str, object]) -> str:
    """One log line: this runner's figure, and the host's beside it when there is one."""
    task = get_task(str(measured["task"]))
    line = "{} scored by this runner: {:.2f}{} on {} images".format(task.label, measured[task.metric], task.unit,
                                                                   measured["images"])
    reference = check.get("reference_" + task.metric)
    if reference is not None:
        line += " (host {}: {:.2f}{}, {:+.2f} points)".format(check["reference_model"], reference, task.unit,
                                                              check["delta_points"])
    return line
