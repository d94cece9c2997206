"""Tasks: what a model's outputs are scored against, and the one figure that says how well.

A task reads its targets from the eval set (`eval.npz`), scores each batch of outputs and names its
metric. `accuracy.score` runs the model over the eval images and hands every batch to the task, and a
result records `accuracy.task`, `accuracy.metric` and the figure under the metric's name (`top1` for
classification, as results always had it). A detection task with mAP is one more class here, registered
by name, with no change to the scoring loop, the result schema or its readers.

Python 3.8 clean and torch-free.
"""

from typing import Dict, Mapping

import numpy as np

from ...errors import EdgekitError
from .results import TOP1_CHECK_TOLERANCE_POINTS


class Meter(object):
    """Accumulates one run's score, batch by batch."""

    def update(self, outputs: Dict[str, np.ndarray], targets: np.ndarray) -> None:
        raise NotImplementedError

    def value(self) -> float:
        raise NotImplementedError


class Task(object):
    name = "task"
    metric = "metric"       # the figure's key in results (accuracy[metric], device_check[metric])
    label, unit = "score", ""   # how a log line names the figure
    tolerance = 1.0         # how many points below the host's figure a device run may score

    def targets(self, arrays: Mapping[str, np.ndarray], path: str, images: np.ndarray) -> np.ndarray:
        """This task's targets from the eval set's arrays, checked against its images."""
        raise NotImplementedError

    def meter(self) -> Meter:
        raise NotImplementedError


class _TopOne(Meter):
    def __init__(self) -> None:
        self.correct, self.seen = 0, 0

    def update(self, outputs: Dict[str, np.ndarray], targets: np.ndarray) -> None:
        name, logits = next(iter(outputs.items()))
        if logits.ndim != 2 or logits.shape[0] != targets.shape[0]:
            raise EdgekitError("output {} has shape {}; scoring expects (batch, classes) logits".format(
                name, list(logits.shape)))
        self.correct += int((logits.argmax(1) == targets).sum())
        self.seen += int(targets.shape[0])

    def value(self) -> float:
        return round(100.0 * self.correct / max(1, self.seen), 3)


class Classification(Task):
    """Top-1 in percent: the first output's arg-max against integer labels."""
    name = "classification"
    metric = "top1"
    label, unit = "top-1", "%"
    tolerance = TOP1_CHECK_TOLERANCE_POINTS

    def targets(self, arrays: Mapping[str, np.ndarray], path: str, images: np.ndarray) -> np.ndarray:
        if "labels" not in arrays:
            raise EdgekitError("eval set {} has no 'labels' array; re-run the host stages to write it again".format(
                path))
        labels = arrays["labels"]
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise EdgekitError("eval set {} has images {} and labels {}; expected N images (N, C, H, W) and N "
                               "labels".format(path, list(images.shape), list(labels.shape)))
        if not np.issubdtype(labels.dtype, np.integer):
            raise EdgekitError("eval set {} has {} labels; expected integers".format(path, labels.dtype.name))
        return labels

    def meter(self) -> Meter:
        return _TopOne()


TASKS: Dict[str, Task] = {}
DEFAULT_TASK = "classification"


def register_task(task: Task) -> None:
    TASKS[task.name] = task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise EdgekitError("unknown task {!r}; this edgekit scores {}".format(name, ", ".join(sorted(TASKS))))
    return TASKS[name]


register_task(Classification())
