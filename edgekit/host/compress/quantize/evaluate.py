"""Scoring ONNX models (a file, or a ModelProto built in memory) in onnxruntime on the CPU.

`exact` (the default) runs the graph as written, with onnxruntime's graph optimizations off: a Q/DQ
model then computes exactly its fake-quant semantics (DequantizeLinear, then float ops), which is what
TensorRT's INT8 kernels compute (int32 accumulation). With them on, onnxruntime's CPU fusions run
integer kernels of their own, which need not agree: measured on MobileNetV2 (digits, per-tensor weights)
97.21% exact against 98.33% optimized, on an AVX2 CPU without VNNI. Calibrators, the fallback and the
twin score exactly; `exact=False` is how the measure stage scores the file.

`Batches` is a callable that returns a fresh iterator of (images, labels) numpy batches: the val split
streams through it, however large, once per model scored.
"""

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

Batches = Callable[[], Iterable[Tuple[np.ndarray, np.ndarray]]]


def _session(model: Any, threads: Optional[int], exact: bool = True):  # noqa: ANN202
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def logits(model: Any, images: np.ndarray, threads: Optional[int] = None, batch: int = 64) -> np.ndarray:
    session = _session(model, threads)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + batch].astype(np.float32)})[0]
                           for i in range(0, len(images), batch)])


def predictions(model: Any, batches: Batches, threads: Optional[int] = None,
                exact: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(predicted class, label) over every batch."""
    session = _session(model, threads, exact)
    name = session.get_inputs()[0].name
    found, labels = [], []
    for images, batch_labels in batches():
        found.append(session.run(None, {name: images.astype(np.float32)})[0].argmax(1))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(found), np.concatenate(labels)


def top1(model: Any, batches: Batches, threads: Optional[int] = None, exact: bool = True) -> float:
    """Top-1 in percent, rounded as every figure edgekit records (3 decimals)."""
    found, labels = predictions(model, batches, threads, exact)
    return round(float((found == labels).mean() * 100.0), 3)


def array_batches(images: np.ndarray, labels: np.ndarray, batch: int = 64) -> Batches:
    return lambda: ((images[i:i + batch], labels[i:i + batch]) for i in range(0, len(images), batch))


def side_by_side_p50(paths: Dict[str, str], sample: np.ndarray, threads: Optional[int], min_queries: int,
                     min_seconds: float, rounds: int = 3) -> Dict[str, Any]:
    """SingleStream p50 of each model, interleaved `rounds` times in one run (the median of each's): on a
    shared machine only figures measured side by side compare."""
    import contextlib

    from ....device.bench.scenarios import single_stream
    from ....device.runtime.onnxrt import OnnxRuntimeRunner

    feed = {"input": sample[:1].astype(np.float32)}
    p50: Dict[str, List[float]] = {name: [] for name in paths}
    with contextlib.ExitStack() as stack:
        runners = {name: stack.enter_context(OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"],
                                                               threads=threads)) for name, path in paths.items()}
        for _ in range(rounds):
            for name, runner in runners.items():
                found = single_stream(runner, feed, warmup=5, min_queries=min_queries, min_seconds=min_seconds)
                p50[name].append(found["latency"]["p50_ms"])
    result: Dict[str, Any] = {name + "_p50_ms": round(float(np.median(v)), 4) for name, v in p50.items()}
    result.update({"rounds": rounds, "runtime": "onnxruntime-cpu", "threads": threads})
    return result
