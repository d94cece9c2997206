"""The two verbs `edgekit handoff` calls: `deepstream(model, ...)` and `triton(models, ...)`.

A model is what was measured: an ONNX file, or a TensorRT engine (its metadata names the ONNX it was
built from, its precision, DLA core and batch profile). The contract comes from summary.json; the
Offline sweep from the bench result JSON of that model.
"""

import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from .. import summary as summaries
from ..device import layout
from ..device.bench.results import load_result
from ..errors import EdgekitError
from . import deepstream as ds
from . import triton as tr


def _is_engine(path: str) -> bool:
    return path.endswith((".engine", ".plan"))


def _engine_meta(path: str) -> Optional[Dict[str, Any]]:
    from ..device.engine.metadata import load_metadata

    return load_metadata(path) if _is_engine(path) else None


def source_onnx(model: str, meta: Optional[Dict[str, Any]], bundle: str) -> str:
    """The ONNX a model is (or, for an engine, was built from: its metadata's path, read from the bundle)."""
    if meta is None:
        return model
    named = meta.get("onnx_path") or ""
    for candidate in (named, os.path.join(bundle, named), os.path.join(bundle, os.path.basename(named))):
        if named and os.path.isfile(candidate):
            return candidate
    raise EdgekitError("{} was built from {}, which is not here (looked beside {}): copy it there".format(
        model, named or "an unrecorded ONNX", bundle))


def _calibration_cache(meta: Optional[Dict[str, Any]], precision: str, bundle: str) -> Optional[str]:
    """Implicit INT8 (a DLA engine) reads the calibration cache; explicit Q/DQ and float engines need none."""
    if meta is None or precision != "int8" or meta.get("dla_core") is None:
        return None
    path = os.path.join(bundle, layout.CALIB_CACHE)
    if not os.path.isfile(path):
        raise EdgekitError("{} is implicit INT8 on DLA and needs {}, which is not in {}".format(
            meta.get("onnx_path"), layout.CALIB_CACHE, bundle))
    return path


def _batch(meta: Optional[Dict[str, Any]]) -> int:
    profile = (meta or {}).get("profile") or {}
    return int((profile.get("max") or [1])[0])


def engine_builder(meta: Dict[str, Any], calibration_cache: Optional[str],
                   log: Callable[[str], None]) -> Callable[[str], str]:
    """Builds an engine from a rewritten ONNX with the measured engine's own settings (precision, DLA core,
    batch profile), so nvinfer loads what was measured plus the hand-off's Mul/Add and Softmax."""
    from ..device.engine.builder import BuildConfig, build_engine

    profile = meta.get("profile") or {}
    low, opt, high = ((profile.get(k) or [1])[0] for k in ("min", "opt", "max"))
    static = low == high

    def build(onnx_path: str) -> str:
        cfg = BuildConfig(onnx_path, engine_path=os.path.splitext(onnx_path)[0] + ".engine",
                          precision=meta["precision"], dla_core=meta.get("dla_core"),
                          static_batch=low if static else None, min_batch=None if static else low,
                          opt_batch=None if static else opt, max_batch=None if static else high,
                          calibration_cache=calibration_cache, workspace_mb=meta.get("workspace_mb") or 1024)
        build_engine(cfg, log=log)
        return cfg.engine_path
    return build


def deepstream(model: str, summary_path: str, out_dir: str, precision: Optional[str] = None, build: bool = False,
               log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The DeepStream package of `model` in `out_dir` (see deepstream.py)."""
    contract = summaries.read_preprocessing(summary_path)
    bundle = os.path.dirname(os.path.abspath(summary_path))
    meta = _engine_meta(model)
    onnx = source_onnx(model, meta, bundle)
    precision = precision or (meta or {}).get("precision") or layout.precision_of(onnx) or "fp32"
    calib = _calibration_cache(meta, precision, bundle)
    builder = engine_builder(meta, calib, log) if build and meta is not None else None
    manifest = ds.write(out_dir, onnx, contract, precision, batch=_batch(meta), dla_core=(meta or {}).get("dla_core"),
                        calibration_cache=calib, build=builder,
                        source={"measured": model, "engine_metadata": meta})
    log("deepstream: {} ({}; {}) -> {}".format(os.path.join(out_dir, ds.CONFIG_FILE), manifest["model"],
                                               manifest["normalisation"]["why"], out_dir))
    return manifest


def model_io(model: str, num_classes: int) -> Dict[str, List[tr.ModelIO]]:
    """The model's input (from its runner, so an engine reads its own bindings) and its logits output."""
    from ..device.runtime import registry

    runtime = "tensorrt" if _is_engine(model) else "onnxruntime"
    with registry.create(runtime, model) as runner:
        specs, outputs = runner.input_specs(), runner.output_names()
    inputs = [tr.ModelIO(s.name, s.dtype.name, [d if isinstance(d, int) and d >= 0 else None for d in s.shape])
              for s in specs]
    return {"inputs": inputs, "outputs": [tr.ModelIO(outputs[0], "float32", [inputs[0].shape[0], num_classes])]}


def triton(models: Sequence[str], summary_path: str, repo_dir: str, results: Sequence[Optional[str]] = (),
           name: str = "model", log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """A Triton repository with one model per engine (`<name>` alone, `<name>_<placement>` for several)."""
    contract = summaries.read_preprocessing(summary_path)
    num_classes = len(contract["labels"])
    written = []
    for i, model in enumerate(models):
        result = load_result(results[i]) if i < len(results) and results[i] else None
        meta = _engine_meta(model)
        placement = "dla{}".format(meta["dla_core"]) if meta and meta.get("dla_core") is not None else \
            ((result or {}).get("labels") or {}).get("placement") or ("gpu" if meta else "cpu")
        io = model_io(model, num_classes)
        written.append(tr.write(repo_dir, name if len(models) == 1 else "{}_{}".format(name, placement), model,
                                io["inputs"], io["outputs"], meta, result, contract))
        log("triton: {}/{} ({}, max_batch_size {}, preferred {})".format(
            repo_dir, written[-1]["name"], written[-1]["platform"], written[-1]["max_batch_size"],
            written[-1]["preferred_batch_size"] or "-"))
    return written
