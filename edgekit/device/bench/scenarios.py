"""Scenarios after MLPerf LoadGen: SingleStream (batch 1 latency) and Offline (throughput per batch).

Both warm up first (the first runs pay for allocations, kernel selection and caches), then measure
until *both* a minimum query count and a minimum duration are reached, so short models get enough
samples and slow ones enough time.
"""

import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from ..runtime.base import Runner
from .stats import latency_stats

Progress = Callable[[str, int, float], None]  # (label, queries so far, seconds so far)


class Window(object):
    """Something to run over each measured window (the power sampler): start, then stop → summary."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, inferences: int, seconds: float) -> Dict[str, object]:
        raise NotImplementedError


def _measure(runner: Runner, feed: Dict[str, np.ndarray], warmup: int, min_queries: int, min_seconds: float,
             max_seconds: Optional[float], label: str, progress: Optional[Progress],
             window: Optional[Window]):  # noqa: ANN202
    for _ in range(max(0, warmup)):
        runner.infer(feed, check=False)
    if window is not None:
        window.start()  # power is sampled over the measured queries only, not the warm-up
    e2e, compute = [], []  # seconds per query: end-to-end, and device compute where known
    started = time.perf_counter()
    last_report = started
    while True:
        runner.infer(feed, check=False)
        e2e.append(runner.last_inference_time() or 0.0)
        c = runner.last_compute_time()
        if c is not None:
            compute.append(c)
        now = time.perf_counter()
        elapsed = now - started
        if progress is not None and now - last_report >= 0.5:
            progress(label, len(e2e), elapsed)
            last_report = now
        if len(e2e) >= min_queries and elapsed >= min_seconds:
            break
        if max_seconds is not None and elapsed >= max_seconds and len(e2e) >= 2:
            break
    wall = time.perf_counter() - started
    power = window.stop(inferences=len(e2e) * _batch_of(feed), seconds=wall) if window is not None else None
    if progress is not None:
        progress(label, len(e2e), wall)
    return e2e, compute, wall, power


def single_stream(runner: Runner, feed: Dict[str, np.ndarray], warmup: int = 10, min_queries: int = 200,
                  min_seconds: float = 5.0, max_seconds: Optional[float] = None,
                  progress: Optional[Progress] = None, window: Optional[Window] = None) -> Dict[str, object]:
    """Batch-1 latency: one query at a time, back to back."""
    runner.check_feed(feed)
    e2e, compute, wall, power = _measure(runner, feed, warmup, min_queries, min_seconds, max_seconds,
                                         "single-stream", progress, window)
    result = {"scenario": "single_stream", "batch": _batch_of(feed), "warmup": warmup,
              "queries": len(e2e), "seconds": round(wall, 4),
              "qps": round(len(e2e) / wall, 3) if wall > 0 else None,
              "latency": latency_stats(e2e),
              "compute": latency_stats(compute) if compute else None}
    if power is not None:
        result["power"] = power
    return result


def offline(runner: Runner, make_feed: Callable[[int], Dict[str, np.ndarray]], batches: Sequence[int],
            warmup: int = 3, min_queries: int = 20, min_seconds: float = 3.0, max_seconds: Optional[float] = None,
            progress: Optional[Progress] = None, window: Optional[Window] = None) -> Dict[str, object]:
    """Throughput (images per second) at each batch size of the sweep; the best batch is named."""
    rows = []
    for batch in batches:
        feed = make_feed(batch)
        runner.check_feed(feed)
        e2e, compute, wall, power = _measure(runner, feed, warmup, min_queries, min_seconds, max_seconds,
                                             "offline batch {}".format(batch), progress, window)
        images = batch * len(e2e)
        row = {"batch": batch, "queries": len(e2e), "seconds": round(wall, 4),
               "throughput": round(images / sum(e2e), 3) if sum(e2e) > 0 else None,
               "latency": latency_stats(e2e)}
        if compute:
            row["compute_throughput"] = round(batch * len(compute) / sum(compute), 3)
            row["compute"] = latency_stats(compute)
        if power is not None:
            row["power"] = power
        rows.append(row)
    best = max(rows, key=lambda r: r["throughput"] or 0.0)
    return {"scenario": "offline", "rows": rows, "best_batch": best["batch"], "best_throughput": best["throughput"]}


def _batch_of(feed: Dict[str, np.ndarray]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1
