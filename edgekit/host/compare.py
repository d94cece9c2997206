"""The comparison suite: dense vs compressed, PyTorch eager vs onnxruntime, FP32 vs INT8, side by side.

Both models (dense: the teacher; ours: the student) are measured in one run, by each runtime, on the
same real input resized to the deployment resolution (224×224 by default), batch 1 (SingleStream) and a
batch sweep (Offline), with the same harness and thread count. The ONNX files timed are kept under
`<artifacts>/compare/`.
"""

import os
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..device import layout
from ..device.bench.scenarios import offline, single_stream
from ..device.runtime.base import Runner
from ..device.runtime.onnxrt import OnnxRuntimeRunner
from ..recipe import Recipe
from .compress.quantize import quantize_cpu
from .data import DataBundle
from .export import INPUT_NAME, export_onnx
from .torch_runners import TorchEagerRunner


def _resized(batches: List[torch.Tensor], size: int) -> List[np.ndarray]:
    return [F.interpolate(b, size=(size, size), mode="bilinear", align_corners=False).numpy() for b in batches]


def compare(teacher: nn.Module, student: nn.Module, data: DataBundle, recipe: Recipe, out_dir: str,
            log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure dense and compressed models side by side; return the `compare` section of the summary."""
    cfg = recipe.compare
    size = cfg.image_size
    threads = recipe.bench.threads or recipe.threads or os.cpu_count() or 1
    folder = os.path.join(out_dir, layout.COMPARE_DIR)
    os.makedirs(folder, exist_ok=True)
    paths = {"dense.fp32": os.path.join(folder, "dense.fp32.onnx"),
             "dense.int8": os.path.join(folder, "dense.int8.cpu.onnx"),
             "ours.fp32": os.path.join(folder, "ours.fp32.onnx"),
             "ours.int8": os.path.join(folder, "ours.int8.cpu.onnx")}
    log("compare: exporting and quantizing at {0}x{0} into {1}".format(size, folder))
    export_onnx(teacher, paths["dense.fp32"], size)
    export_onnx(student, paths["ours.fp32"], size)
    real = list(data.calibration_batches(cfg.calibration_samples, batch_size=8, seed=recipe.seed))
    calibration = _resized(real, size)
    for model in ("dense", "ours"):
        quantize_cpu(paths[model + ".fp32"], paths[model + ".int8"], calibration, recipe.quantize.method,
                     reduce_range=recipe.quantize.cpu_reduce_range)

    sample = _resized([data.val[0][0][None]], size)[0].astype(np.float32)  # one real image, resized

    def feed(batch: int) -> Dict[str, np.ndarray]:
        return {INPUT_NAME: np.ascontiguousarray(np.repeat(sample, batch, axis=0))}

    def ort(key: str) -> Callable[[], Runner]:
        return lambda: OnnxRuntimeRunner(paths[key], providers=["CPUExecutionProvider"], threads=threads)

    # (model: dense or ours, runtime, file, precision, runner); a run's variants (teacher, rounds,
    # student) are another axis, the one the deploy jobs measure
    contenders = [
        ("dense", "pytorch-eager", None, "fp32", lambda: TorchEagerRunner(teacher, size, threads)),
        ("dense", "onnxruntime", paths["dense.fp32"], "fp32", ort("dense.fp32")),
        ("dense", "onnxruntime", paths["dense.int8"], "int8", ort("dense.int8")),
        ("ours", "onnxruntime", paths["ours.fp32"], "fp32", ort("ours.fp32")),
        ("ours", "onnxruntime", paths["ours.int8"], "int8", ort("ours.int8")),
    ]
    rows = []
    for model, runtime, path, precision, make in contenders:
        with make() as runner:
            ss = single_stream(runner, feed(1), warmup=3, min_queries=cfg.min_queries, min_seconds=cfg.min_seconds)
            sweep = [b for b in cfg.batches if b != 1]
            off = offline(runner, feed, sweep, warmup=1, min_queries=max(3, cfg.min_queries // 4),
                          min_seconds=cfg.min_seconds) if sweep else {"rows": []}
        base = {"model": model, "runtime": runtime, "path": os.path.relpath(path, out_dir) if path else None,
                "precision": precision}
        rows.append(dict(base, input_shape=[1, 3, size, size], batch=1, p50_ms=ss["latency"]["p50_ms"],
                         p99_ms=ss["latency"]["p99_ms"], throughput=round(1000.0 / ss["latency"]["p50_ms"], 3)))
        for row in off["rows"]:
            rows.append(dict(base, input_shape=[row["batch"], 3, size, size], batch=row["batch"],
                             p50_ms=row["latency"]["p50_ms"], p99_ms=row["latency"]["p99_ms"],
                             throughput=row["throughput"]))
        log("compare: {:<5} {:<13} {:<4} batch 1 p50 {:8.2f} ms".format(model, runtime, precision,
                                                                        ss["latency"]["p50_ms"]))

    def p50(model: str, runtime: str, precision: str) -> float:
        return next(r["p50_ms"] for r in rows if r["model"] == model and r["runtime"] == runtime
                    and r["precision"] == precision and r["batch"] == 1)

    ours = p50("ours", "onnxruntime", "int8")
    result = {"rows": rows, "image_size": size, "threads": threads,
              "speedup_vs_ort_fp32": round(p50("dense", "onnxruntime", "fp32") / ours, 3),
              "speedup_vs_torch_fp32": round(p50("dense", "pytorch-eager", "fp32") / ours, 3),
              "speedup_vs_ort_int8": round(p50("dense", "onnxruntime", "int8") / ours, 3)}
    return result


def format_table(section: Dict[str, Any]) -> str:
    """The comparison as a fixed-width table with ratios against dense FP32 in onnxruntime."""
    rows = section["rows"]
    base = {r["batch"]: r["p50_ms"] for r in rows
            if r["model"] == "dense" and r["runtime"] == "onnxruntime" and r["precision"] == "fp32"}
    lines = ["{:<6} {:<14} {:<5} {:>5} {:>10} {:>10} {:>11} {:>9}".format(
        "model", "runtime", "prec", "batch", "p50 ms", "p99 ms", "img/s", "vs ORT32")]
    for r in sorted(rows, key=lambda r: (r["batch"], r["model"], r["runtime"], r["precision"])):
        ratio = base.get(r["batch"], 0.0) / r["p50_ms"] if r["p50_ms"] else 0.0
        lines.append("{:<6} {:<14} {:<5} {:>5} {:>10.2f} {:>10.2f} {:>11.1f} {:>8.2f}x".format(
            r["model"], r["runtime"], r["precision"], r["batch"], r["p50_ms"], r["p99_ms"], r["throughput"] or 0,
            ratio))
    lines.append("ours INT8 at batch 1: {:.2f}x faster than dense FP32 in onnxruntime, {:.2f}x than dense FP32 "
                 "in PyTorch eager ({}x{}, {} threads)".format(section["speedup_vs_ort_fp32"],
                                                               section["speedup_vs_torch_fp32"],
                                                               section["image_size"], section["image_size"],
                                                               section["threads"]))
    return "\n".join(lines)
