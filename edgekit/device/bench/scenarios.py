"""Scenarios after MLPerf LoadGen: SingleStream (batch 1 latency) and Offline (throughput per batch),
and ConcurrentOffline (several engines at once, one thread each: GPU + DLA0 + DLA1).

Both warm up first (the first runs pay for allocations, kernel selection and caches), for a number
of queries and at least `warmup_ms` (trtexec's --warmUp), then measure until *both* a minimum query
count and a minimum duration (trtexec's --duration) are reached, so short models get enough samples
and slow ones enough time. Every query is split as trtexec splits it (enqueue, H2D, compute, D2H
beside end-to-end) where the runner can tell; the per-query records can be exported in trtexec's
--exportTimes layout.
"""

import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..runtime.base import Runner
from .stats import latency_stats

Progress = Callable[[str, int, float], None]  # (label, queries so far, seconds so far)
TimesSink = Callable[[str, List[Dict[str, float]]], None]  # (label, per-query records)

SPLIT_PARTS = ("enqueue", "h2d", "compute", "d2h")


class Window(object):
    """Something to run over each measured window (power, thermal): start, then stop -> fields for the row."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, inferences: int, seconds: float) -> Dict[str, object]:
        raise NotImplementedError


class Windows(Window):
    """Several windows over the same measured span; their fields are merged."""

    def __init__(self, windows: Sequence[Optional[Window]]) -> None:
        self.windows = [w for w in windows if w is not None]

    def start(self) -> None:
        for window in self.windows:
            window.start()

    def stop(self, inferences: int, seconds: float) -> Dict[str, object]:
        fields: Dict[str, object] = {}
        for window in reversed(self.windows):
            fields.update(window.stop(inferences, seconds))
        return fields


def split_stats(runner: Runner, records: List[Dict[str, float]]) -> Dict[str, object]:
    """trtexec's performance summary per part (min, max, mean, median = p50, p90, p95, p99 in ms), or
    {"status": "not applicable", "reason"} for a part this runner cannot measure."""
    out: Dict[str, object] = {}
    for part in SPLIT_PARTS:
        values = [r[part] for r in records if part in r]
        if values and len(values) == len(records):
            out[part] = latency_stats(values)
        else:
            out[part] = {"status": "not applicable",
                         "reason": runner.split_not_applicable.get(part, "not measured by {}".format(runner.name))}
    if all(part in r for r in records for part in ("h2d", "compute", "d2h")) and records:
        # trtexec's "Latency": H2D + GPU compute + D2H of one query
        out["latency"] = latency_stats([r["h2d"] + r["compute"] + r["d2h"] for r in records])
    out["end_to_end"] = latency_stats([r["end_to_end"] for r in records])
    return out


def export_times(records: List[Dict[str, float]]) -> List[Dict[str, float]]:
    """trtexec's --exportTimes entries (a JSON list, milliseconds from the first query's start).

    Enqueue times are host times; the H2D/compute/D2H times come from the query's CUDA events, placed
    on the GPU timeline from the runner's epoch event where it has one (TensorRT), else at the
    enqueue (onnxruntime: no copies, so H2D and D2H are 0 ms)."""
    if not records:
        return []
    t0 = records[0].get("start", 0.0)
    g0 = records[0].get("gpu_start")
    rows = []
    for r in records:
        enq = (r.get("start", 0.0) - t0) * 1000.0
        h2d, compute, d2h = (r.get(k, 0.0) * 1000.0 for k in ("h2d", "compute", "d2h"))
        gpu = (r["gpu_start"] - g0) * 1000.0 if g0 is not None and "gpu_start" in r else enq
        rows.append({"startEnqMs": enq, "endEnqMs": enq + r.get("enqueue", r.get("compute", 0.0)) * 1000.0,
                     "startH2dMs": gpu, "endH2dMs": gpu + h2d,
                     "startComputeMs": gpu + h2d, "endComputeMs": gpu + h2d + compute,
                     "startD2hMs": gpu + h2d + compute, "endD2hMs": gpu + h2d + compute + d2h,
                     "h2dMs": h2d, "computeMs": compute, "d2hMs": d2h, "latencyMs": h2d + compute + d2h,
                     "endToEndMs": r["end_to_end"] * 1000.0})
    return [{k: round(v, 6) for k, v in row.items()} for row in rows]


def _measure(runner: Runner, feed: Dict[str, np.ndarray], warmup: int, min_queries: int, min_seconds: float,
             max_seconds: Optional[float], label: str, progress: Optional[Progress],
             window: Optional[Window], warmup_ms: float = 0.0):  # noqa: ANN202
    warm_start = time.perf_counter()
    done = 0
    while done < max(0, warmup) or (time.perf_counter() - warm_start) * 1000.0 < warmup_ms:
        runner.infer(feed, check=False)
        done += 1
    if window is not None:
        window.start()  # power is sampled over the measured queries only, not the warm-up
    records: List[Dict[str, float]] = []
    started = time.perf_counter()
    last_report, reported = started, 0
    while True:
        runner.infer(feed, check=False)
        records.append(runner.last_timings())
        now = time.perf_counter()
        elapsed = now - started
        if progress is not None and now - last_report >= 0.5:
            progress(label, len(records), elapsed)
            last_report, reported = now, len(records)
        if len(records) >= min_queries and elapsed >= min_seconds:
            break
        if max_seconds is not None and elapsed >= max_seconds and len(records) >= 2:
            break
    wall = time.perf_counter() - started
    fields = window.stop(inferences=len(records) * _batch_of(feed), seconds=wall) if window is not None else {}
    if progress is not None and reported != len(records):  # the loop may have just printed this very line
        progress(label, len(records), wall)
    return records, wall, fields


def _summary(runner: Runner, records: List[Dict[str, float]]):  # noqa: ANN202
    e2e = [r["end_to_end"] for r in records]
    compute = [r["compute"] for r in records if "compute" in r] if runner.last_compute_time() is not None else []
    return e2e, compute


def single_stream(runner: Runner, feed: Dict[str, np.ndarray], warmup: int = 10, min_queries: int = 200,
                  min_seconds: float = 5.0, max_seconds: Optional[float] = None,
                  progress: Optional[Progress] = None, window: Optional[Window] = None, warmup_ms: float = 0.0,
                  times: Optional[TimesSink] = None) -> Dict[str, object]:
    """Batch-1 latency: one query at a time, back to back."""
    runner.check_feed(feed)
    records, wall, fields = _measure(runner, feed, warmup, min_queries, min_seconds, max_seconds,
                                     "single-stream", progress, window, warmup_ms)
    e2e, compute = _summary(runner, records)
    result = {"scenario": "single_stream", "batch": _batch_of(feed), "warmup": warmup, "warmup_ms": warmup_ms,
              "queries": len(e2e), "seconds": round(wall, 4),
              "qps": round(len(e2e) / wall, 3) if wall > 0 else None,
              "latency": latency_stats(e2e),
              "compute": latency_stats(compute) if compute else None,
              "split": split_stats(runner, records)}
    result.update(fields)
    if times is not None:
        times("single-stream", records)
    return result


def offline(runner: Optional[Runner], make_feed: Callable[[int], Dict[str, np.ndarray]], batches: Sequence[int],
            warmup: int = 3, min_queries: int = 20, min_seconds: float = 3.0, max_seconds: Optional[float] = None,
            progress: Optional[Progress] = None, window: Optional[Window] = None, warmup_ms: float = 0.0,
            times: Optional[TimesSink] = None,
            runner_for: Optional[Callable[[int], Runner]] = None) -> Dict[str, object]:
    """Throughput (images per second) at each batch size of the sweep; the best batch is named.
    `runner_for(batch)`: the runner of each batch (static-batch DLA engines: one engine per batch)."""
    rows = []
    for batch in batches:
        current = runner_for(batch) if runner_for is not None else runner
        assert current is not None
        feed = make_feed(batch)
        current.check_feed(feed)
        records, wall, fields = _measure(current, feed, warmup, min_queries, min_seconds, max_seconds,
                                         "offline batch {}".format(batch), progress, window, warmup_ms)
        e2e, compute = _summary(current, records)
        images = batch * len(e2e)
        row = {"batch": batch, "queries": len(e2e), "seconds": round(wall, 4),
               "throughput": round(images / sum(e2e), 3) if sum(e2e) > 0 else None,
               "latency": latency_stats(e2e), "split": split_stats(current, records)}
        if compute:
            row["compute_throughput"] = round(batch * len(compute) / sum(compute), 3)
            row["compute"] = latency_stats(compute)
        row.update(fields)
        rows.append(row)
        if times is not None:
            times("offline batch {}".format(batch), records)
    best = max(rows, key=lambda r: r["throughput"] or 0.0)
    return {"scenario": "offline", "rows": rows, "best_batch": best["batch"], "best_throughput": best["throughput"]}


def concurrent_offline(runners: Dict[str, Runner], feeds: Dict[str, Dict[str, np.ndarray]], min_seconds: float = 3.0,
                       warmup: int = 3, window: Optional[Window] = None,
                       progress: Optional[Progress] = None) -> Dict[str, object]:
    """Every runner at once, one thread (and, for TensorRT, one stream) each, for `min_seconds`:
    each engine's images and share, and the combined throughput (MLPerf's Xavier Offline runs GPU +
    DLA0 + DLA1 together this way). The window (power, thermal) spans them all."""
    for name, runner in runners.items():
        runner.check_feed(feeds[name])
        for _ in range(max(0, warmup)):
            runner.infer(feeds[name], check=False)
    counts = {name: 0 for name in runners}
    e2e: Dict[str, List[float]] = {name: [] for name in runners}
    errors: Dict[str, BaseException] = {}
    go, stop = threading.Event(), threading.Event()

    def drive(name: str) -> None:
        runner, feed = runners[name], feeds[name]
        go.wait()
        try:
            while not stop.is_set():
                runner.infer(feed, check=False)
                counts[name] += 1
                e2e[name].append(runner.last_inference_time() or 0.0)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            errors[name] = exc
            stop.set()

    threads = [threading.Thread(target=drive, args=(name,), name="concurrent-" + name, daemon=True)
               for name in runners]
    for thread in threads:
        thread.start()
    if window is not None:
        window.start()
    started = time.perf_counter()
    go.set()
    while not stop.wait(0.25):
        elapsed = time.perf_counter() - started
        if progress is not None:
            progress("concurrent", sum(counts.values()), elapsed)
        if elapsed >= min_seconds and all(counts.values()):
            stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        name, exc = next(iter(errors.items()))
        raise exc
    images = {name: counts[name] * _batch_of(feeds[name]) for name in runners}
    total = sum(images.values())
    fields = window.stop(inferences=total, seconds=wall) if window is not None else {}
    engines = []
    for name in runners:
        engines.append({"model": name, "batch": _batch_of(feeds[name]), "queries": counts[name],
                        "images": images[name], "throughput": round(images[name] / wall, 3) if wall > 0 else None,
                        "share": round(images[name] / total, 4) if total else None,
                        "latency": latency_stats(e2e[name]) if e2e[name] else None})
    result: Dict[str, object] = {"scenario": "concurrent_offline", "seconds": round(wall, 4), "engines": engines,
                                 "images": total, "throughput": round(total / wall, 3) if wall > 0 else None}
    result.update(fields)
    return result


def _batch_of(feed: Dict[str, np.ndarray]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1
