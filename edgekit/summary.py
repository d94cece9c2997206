"""summary.json: its one schema, built from the stage results, and the one module that reads it.

The host writes it at the end of `edgekit run` from what the stages of this run computed or reused,
never merged with an older summary (that could only bring back stale keys). The bench, the deploy bundle
and the compare table read it through the functions here.

Top-level fields of "edgekit.summary/1":
  schema, recipe, config_hash, created, input_shape, num_classes,
  teacher {top1, macs, params, macs_at_224, path, history},
  student {top1, macs, params, macs_at_224, path, method, macs_ratio, params_ratio, top1_delta,
           agreement_with_teacher, width_spec, and with prune.target latency the last round's latency_ms,
           dense_latency_ms, latency_ratio, target_latency_ratio, latency_backend},
  rounds [...], stages [{name, seconds, reused}], models [...] (each exported ONNX: top-1, p50/p99, size,
  TensorRT lint), variants [...], quantization {...} ({} when disabled; the calibrator table is its
  methods_top1), fallback {...} (kept layers with their sensitivity, top-1 before/after, the latency they
  cost, the twin check; {} when disabled), qat {...} (QAT with distillation: its INT8 top-1 beside
  ptq_top1, fallback_top1 and fp32_top1, the epochs, the twin check; {} when disabled),
  int8 {from: shipped file -> the stage file it copies},
  eval_set {...} or null, compare {...} or null, preprocessing {...} or null (the contract below),
  recipe_config, environment, command.

The preprocessing contract ("edgekit.preprocessing/1"), what an application must do to an image before the
model sees it, built by the host's data pipeline from its own constants (`preprocessing`) and read by every
hand-off (`read_preprocessing`): resize {size or shorter_side, interpolation}, crop {mode, size} or null,
value_range [0, 1] (the pixel divided by pixel_scale: 255 for 8-bit images), mean and std per channel
(y = (v - mean) / std), color_order (RGB, or GRAY repeated to three channels), layout NCHW, dtype, labels.

Python 3.8 clean and torch-free: the device reads summaries too.
"""

import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .artifacts import config_hash
from .device import layout
from .errors import EdgekitError

SCHEMA = "edgekit.summary/1"
PREPROCESSING_SCHEMA = "edgekit.preprocessing/1"
COLOR_ORDERS = ("RGB", "BGR", "GRAY")
# Round records keep these for resuming; the summary shows the figures only.
_ROUND_PRIVATE = ("history", "width_spec", "key")


_LATENCY_FIELDS = ("latency_ms", "dense_latency_ms", "latency_ratio", "target_latency_ratio", "latency_backend")


def _reached_latency(metrics: Mapping[str, Dict[str, Any]]) -> Dict[str, Any]:
    """A latency target's outcome, as the last round measured it (nothing for a MACs target)."""
    rounds = metrics.get("compress", {}).get("rounds") or []
    return {k: rounds[-1][k] for k in _LATENCY_FIELDS if rounds and k in rounds[-1]}


def build(metrics: Mapping[str, Dict[str, Any]], stages: Sequence[Dict[str, Any]], config: Dict[str, Any], *,
          input_shape: List[int], num_classes: int, environment: Dict[str, Any],
          command: Sequence[str]) -> Dict[str, Any]:
    """The summary of one run. `metrics` maps each stage that ran (or was reused) to its metrics;
    a stage that was skipped is absent and its fields are written empty, so nothing lingers."""
    evaluated = metrics["evaluate"]
    t, s = evaluated["teacher"], evaluated["student"]
    return {
        "schema": SCHEMA,
        "recipe": config["name"],
        "config_hash": config_hash(config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "teacher": dict(t, path=layout.TEACHER, history=metrics["teacher"].get("history", []),
                        train=metrics["teacher"].get("train")),
        "student": dict(s, path=layout.STUDENT, method=config["prune"]["method"],
                        macs_ratio=round(s["macs"] / float(t["macs"]), 5),
                        params_ratio=round(s["params"] / float(t["params"]), 5),
                        top1_delta=round(s["top1"] - t["top1"], 3),
                        agreement_with_teacher=evaluated["agreement"], **_reached_latency(metrics)),
        "rounds": [{k: v for k, v in r.items() if k not in _ROUND_PRIVATE}
                   for r in metrics["compress"].get("rounds", [])],
        # how the student was distilled (device, precision, processes); the teacher's own is under teacher
        "train": metrics["compress"].get("train"),
        "stages": [dict(st) for st in stages],
        "models": metrics.get("measure", {}).get("models", []),
        "variants": metrics.get("variants", {}).get("variants", []),
        "quantization": metrics.get("quantize", {}).get("quantization", {}),
        "fallback": metrics.get("fallback", {}).get("fallback", {}),
        "qat": metrics.get("qat", {}).get("qat", {}),
        "int8": metrics.get("int8", {}).get("int8", {}),
        "eval_set": {k: v for k, v in (metrics.get("evalset") or {}).items() if k != "preprocessing"} or None,
        "compare": metrics.get("compare") or None,
        "preprocessing": (metrics.get("evalset") or {}).get("preprocessing"),
        "recipe_config": config,
        "environment": environment,
        "command": list(command),
    }


def read(path: str) -> Dict[str, Any]:
    """A summary.json (a file, or an artifacts folder holding one), or one clear EdgekitError."""
    if os.path.isdir(path):
        path = os.path.join(path, layout.SUMMARY)
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read summary {}: {}".format(path, exc)) from None
    # A hand-written summary without a schema (tests, a user's own) is read as this one.
    if not isinstance(summary, dict) or summary.get("schema", SCHEMA) != SCHEMA:
        found = summary.get("schema") if isinstance(summary, dict) else type(summary).__name__
        raise EdgekitError("{} is not an edgekit summary (schema {!r}, expected {}); re-run `edgekit run`".format(
            path, found, SCHEMA))
    return summary


def variants(artifacts: str) -> List[str]:
    """The variants (teacher, intermediate rounds) whose FP32 ONNX files the run left in `artifacts`
    (none when there is no readable summary: a bundle then carries the student only)."""
    try:
        summary = read(artifacts)
    except EdgekitError:
        return []
    return [v["name"] for v in summary.get("variants", [])
            if os.path.exists(os.path.join(artifacts, v.get("path", "")))]


def accuracy_for(summary_path: str, model_path: str, accuracy_from: Optional[str] = None) -> Dict[str, Any]:
    """The top-1 that `edgekit run` measured for this exported model, so speed never goes without it.

    An engine takes the top-1 of `accuracy_from` (the exported model nearest to it), else of the ONNX
    file it was built from (its metadata says which); the result records which model that was.
    """
    summary = read(summary_path)
    name = os.path.basename(accuracy_from or model_path)
    if not accuracy_from and model_path.endswith((".engine", ".plan")):
        from .device.engine.metadata import load_metadata

        name = os.path.basename(load_metadata(model_path).get("onnx_path") or model_path)
    models, varied = list(summary.get("models", [])), list(summary.get("variants", []))
    for entry in models + varied:
        if os.path.basename(entry.get("path", "")) == name:
            return _accuracy_entry(summary, summary_path, entry, is_variant=entry in varied)
    raise EdgekitError("{} lists no accuracy for {} (models: {})".format(
        summary_path, name, ", ".join(os.path.basename(m.get("path", "?")) for m in models + varied) or "none"))


def _accuracy_entry(summary: Dict[str, Any], summary_path: str, entry: Dict[str, Any],
                    is_variant: bool) -> Dict[str, Any]:
    found = {"top1": entry["top1"], "dataset": summary.get("recipe"), "summary": summary_path,
             "split": "val", "measured_on": entry.get("path"),
             "runtime": entry.get("runtime", "pytorch" if is_variant else None)}
    for key in ("macs", "params", "macs_ratio"):
        if key in entry:
            found[key] = entry[key]
    eval_set = summary.get("eval_set") or {}
    if entry.get("path") in eval_set.get("top1", {}):  # the host's top-1 on eval.npz's images
        found["eval_top1"], found["eval_of"] = eval_set["top1"][entry["path"]], eval_set.get("of")
    if "macs" not in found and not is_variant and "student" in summary:
        found.update({k: summary["student"][k] for k in ("macs", "params", "macs_ratio") if k in summary["student"]})
    return found


def preprocessing(resize: Dict[str, Any], crop: Optional[Dict[str, Any]], mean: Sequence[float],
                  std: Sequence[float], color_order: str, labels: Sequence[str], pixel_scale: float = 255.0,
                  layout_name: str = "NCHW", dtype: str = "float32") -> Dict[str, Any]:
    """The preprocessing contract, checked: three channels of mean and std (std > 0), a known colour order."""
    if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
        raise ValueError("a contract needs three means and three positive stds, got {} and {}".format(mean, std))
    if color_order not in COLOR_ORDERS:
        raise ValueError("color_order must be one of {}, got {!r}".format(COLOR_ORDERS, color_order))
    return {"schema": PREPROCESSING_SCHEMA, "resize": dict(resize), "crop": dict(crop) if crop else None,
            "value_range": [0.0, 1.0], "pixel_scale": float(pixel_scale),
            "mean": [float(m) for m in mean], "std": [float(s) for s in std], "color_order": color_order,
            "channels": 3, "layout": layout_name, "dtype": dtype, "labels": [str(label) for label in labels]}


def read_preprocessing(summary_path: str) -> Dict[str, Any]:
    """The contract a summary records, or one clear error (summaries older than the contract lack it)."""
    found = read(summary_path).get("preprocessing")
    if not isinstance(found, dict) or found.get("schema") != PREPROCESSING_SCHEMA:
        raise EdgekitError("{} records no preprocessing contract ({}); re-run the host stages: edgekit run "
                           "--force-stage evalset".format(summary_path, PREPROCESSING_SCHEMA))
    missing = [k for k in ("resize", "mean", "std", "color_order", "layout", "labels") if k not in found]
    if missing:
        raise EdgekitError("{}: the preprocessing contract lacks {}".format(summary_path, ", ".join(missing)))
    return found
