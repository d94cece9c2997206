"""`benchmark`: one model, its runner, the scenarios, power, the environment, one result file."""

import os
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...artifacts import sha256_file
from ...errors import EdgekitError
from ..runtime.base import Runner
from . import environment
from .accuracy import feeding, load_eval_set, merge, score
from .power import PowerSampler, PowerSource, PowerTrace, detect_power_source, summarize_power  # noqa: F401
from .results import save_result
from .scenarios import Window, offline, single_stream


class PowerWindow(Window):
    """Samples power over each measured window; idle baseline taken once before the first."""

    def __init__(self, source: Optional[PowerSource], reasons: List[str], hz: float = 20.0,
                 idle_seconds: float = 2.0) -> None:
        self.source = source
        self.reasons = reasons
        self.hz = hz
        self.idle_seconds = idle_seconds
        self.idle: Optional[PowerTrace] = None
        self.sampler: Optional[PowerSampler] = None

    def start(self) -> None:
        if self.source is None:
            return
        if self.idle is None and self.idle_seconds > 0:
            with PowerSampler(self.source, self.hz) as idle:
                time.sleep(self.idle_seconds)
            self.idle = idle.trace
        self.sampler = PowerSampler(self.source, self.hz).start()

    def stop(self, inferences: int, seconds: float) -> Dict[str, object]:
        if self.source is None or self.sampler is None:
            return {"status": "unavailable", "reason": "; ".join(self.reasons) or "no power source"}
        trace = self.sampler.stop()
        return summarize_power(trace, inferences, seconds, self.idle)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def engine_for(onnx_path: str) -> Optional[str]:
    """An engine built from exactly this ONNX file (its metadata names the ONNX sha256), if any."""
    import glob
    import json

    digest = sha256_file(onnx_path)
    for meta_path in sorted(glob.glob(os.path.join(os.path.dirname(onnx_path) or ".", "*.engine.json"))):
        try:
            with open(meta_path, encoding="utf-8") as f:
                if json.load(f).get("onnx_sha256") == digest:
                    return meta_path[: -len(".json")]
        except (OSError, ValueError):
            continue
    return None


def choose_runner(model_path: str, runner: str = "auto") -> Tuple[str, str, str]:
    """(runtime, path to run, why): TensorRT when it is here and an engine exists, else onnxruntime."""
    if runner not in ("auto", "onnxruntime", "tensorrt"):
        raise EdgekitError("unknown runner {!r}; choose auto, tensorrt or onnxruntime".format(runner))
    is_engine = model_path.endswith((".engine", ".plan"))
    if is_engine:
        if runner == "onnxruntime":
            raise EdgekitError("{} is a TensorRT engine: onnxruntime cannot run it".format(model_path))
        return "tensorrt", model_path, "a TensorRT engine"
    if runner == "onnxruntime":
        return "onnxruntime", model_path, "asked for"
    from ..runtime.tensorrt import tensorrt_available

    version = tensorrt_available()
    engine = engine_for(model_path) if os.path.isfile(model_path) else None
    if version and engine:
        return "tensorrt", engine, "TensorRT {} is here and {} was built from this ONNX".format(
            version, os.path.basename(engine))
    if runner == "tensorrt":
        raise EdgekitError("no TensorRT engine built from {}{}: run edgekit build-engine first".format(
            model_path, "" if version else " and TensorRT is not installed here"))
    why = "TensorRT is not installed here" if not version else "no engine was built from this ONNX yet"
    return "onnxruntime", model_path, why


def make_runner(model_path: str, runner: str = "auto", threads: Optional[int] = None,
                cuda_graph: bool = False) -> Runner:
    """The runner `choose_runner` picks, constructed (cheap: nothing is loaded before `activate`)."""
    runtime, path, _ = choose_runner(model_path, runner)
    if runtime == "tensorrt":
        from ..runtime.tensorrt import TensorRTRunner

        return TensorRTRunner(path, cuda_graph=cuda_graph)
    from ..runtime.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, threads=threads)


def random_feed(runner: Runner, batch: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Inputs of the model's shapes and dtypes, filled with a fixed pseudo-random pattern."""
    rng = np.random.RandomState(seed)
    feed = {}
    for spec in runner.input_specs():
        shape = spec.concrete_shape(batch)
        if np.issubdtype(spec.dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = rng.randint(0, 2, size=shape).astype(spec.dtype)
    return feed


def _progress_printer(stream=sys.stderr) -> Callable[[str, int, float], None]:  # noqa: ANN001
    def show(label: str, queries: int, seconds: float) -> None:
        end = "\n" if not stream.isatty() else "\r"
        stream.write("  {:<18} {:>7} queries {:>6.1f} s{}".format(label, queries, seconds, end))
        stream.flush()
    return show


def benchmark(model_path: str, out_path: Optional[str] = None, runner: str = "auto",
              threads: Optional[int] = None, scenarios: Sequence[str] = ("single_stream", "offline"),
              batches: Sequence[int] = (1, 2, 4, 8), warmup: int = 10, min_queries: int = 100,
              min_seconds: float = 3.0, max_seconds: Optional[float] = None, power: bool = True,
              power_root: str = "/", idle_seconds: float = 2.0, precision: Optional[str] = None,
              accuracy: Optional[Dict[str, object]] = None, cuda_graph: bool = False, progress: bool = True,
              labels: Optional[Dict[str, Optional[str]]] = None, eval_set: Optional[str] = None,
              log: Callable[[str], None] = print) -> Dict[str, object]:
    """Measure `model_path` and (if `out_path`) write the result JSON atomically; return it.

    `labels` (variant, target, placement, recipe) say what was measured where; the results store
    and the dashboard group runs by them. Missing ones are derived from the file name and runner.
    `eval_set` (the host's eval.npz): this runner also scores those images, see `accuracy.merge`.
    """
    unknown = [s for s in scenarios if s not in ("single_stream", "offline")]
    if unknown:
        raise EdgekitError("unknown scenario {}; choose single_stream, offline".format(", ".join(unknown)))
    if any(b < 1 for b in batches):
        raise EdgekitError("batch sizes must be positive, got {}".format(list(batches)))
    evaluation = load_eval_set(eval_set) if eval_set else None  # a bad file fails before minutes of timing
    runtime_name, run_path, why = choose_runner(model_path, runner)
    log("runner: {} ({})".format(runtime_name, why))
    model_runner = make_runner(model_path, runner, threads, cuda_graph)
    if power:
        source, reasons = detect_power_source(power_root)
    else:
        source, reasons = None, ["disabled (--no-power)"]
    window = PowerWindow(source, reasons, idle_seconds=idle_seconds)
    show = _progress_printer() if progress else None
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        with model_runner:
            info = model_runner.runtime_info()
            log("benchmark {} with {} {} ({}); power: {}".format(
                model_path, info.get("runtime", info["runner"]), info.get("runtime_version", ""),
                info.get("providers", ""), source.name if source else "unavailable ({})".format(
                    reasons[-1] if reasons else "none")))
            specs = model_runner.input_specs()
            eval_batch = min(32, max(batches)) if "offline" in scenarios else 1
            if evaluation is not None:
                feeding(model_runner, evaluation[0], eval_batch)
            results: Dict[str, object] = {}
            if "single_stream" in scenarios:
                results["single_stream"] = single_stream(
                    model_runner, random_feed(model_runner, 1), warmup=warmup, min_queries=min_queries,
                    min_seconds=min_seconds, max_seconds=max_seconds, progress=show, window=window)
            if "offline" in scenarios:
                results["offline"] = offline(
                    model_runner, lambda b: random_feed(model_runner, b), batches, warmup=max(1, warmup // 3),
                    min_queries=max(5, min_queries // 5), min_seconds=min_seconds, max_seconds=max_seconds,
                    progress=show, window=window)
            if evaluation is not None:
                # Outside the timed windows; the largest swept batch the engine was built for, at most 32.
                measured = score(model_runner, evaluation[0], evaluation[1], batch=eval_batch)
                accuracy = merge(accuracy, measured, info.get("runtime", info["runner"]))
                check = accuracy["device_check"]
                log("top-1 scored by this runner: {:.2f}% on {} images{}".format(
                    measured["top1"], measured["images"], "" if check.get("reference_top1") is None else
                    " (host {}: {:.2f}%, {:+.2f} points)".format(check["reference_model"], check["reference_top1"],
                                                                check["delta_points"])))
    finally:
        window.close()
    result = {
        "run_id": time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6],
        "created": started,
        "model": {"path": model_path, "ran": run_path, "sha256": sha256_file(run_path),
                  "precision": precision or _precision(model_path), "inputs": [repr(s) for s in specs]},
        "accuracy": accuracy,
        "labels": _labels(model_path, runtime_name, labels or {}),
        "runtime": info,
        "environment": environment.collect(threads=threads, runtime=info, precision=precision),
        "scenarios": results,
        "power_source": source.name if source else None,
        "power_unavailable_reasons": reasons if source is None else [],
        "settings": {"warmup": warmup, "min_queries": min_queries, "min_seconds": min_seconds,
                     "max_seconds": max_seconds, "batches": list(batches)},
    }
    if out_path:
        save_result(out_path, result)
        log("wrote {}".format(out_path))
    return result


def _precision(path: str) -> str:
    name = os.path.basename(path)
    for precision in ("int8", "fp16", "fp32"):
        if ".{}.".format(precision) in name:
            return precision
    return "unknown"


def _labels(model_path: str, runtime_name: str, given: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
    name = os.path.basename(model_path)
    variant = given.get("variant") or ("student" if name.startswith("model.") else name.split(".")[0])
    placement = given.get("placement")
    if not placement:
        dla = [part for part in name.split(".") if part in ("dla0", "dla1")]
        placement = dla[0] if dla else ("gpu" if runtime_name == "tensorrt" else "cpu")
    return {"variant": variant, "target": given.get("target") or "local", "placement": placement,
            "recipe": given.get("recipe")}
