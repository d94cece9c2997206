"""`edgekit handoff triton`: a Triton model repository of the measured model, `<name>/config.pbtxt` and
`<name>/1/model.plan` (a TensorRT engine: platform tensorrt_plan) or `<name>/1/model.onnx` (onnxruntime_onnx).

- max_batch_size: the engine's optimization profile (its metadata records min/opt/max); an ONNX with a
  dynamic batch: the largest batch the Offline sweep measured. A static engine (DLA: one batch each) has
  no batch dimension Triton may vary: max_batch_size 0, the full shape in dims, no dynamic batching.
- dynamic_batching: preferred batch sizes from the measured Offline sweep (the bench result JSON): the
  batches within PREFERRED_WITHIN of the best throughput, at most max_batch_size.
- instance_group: one per engine. A DLA engine runs on a GPU instance whose secondary device is the
  NVDLA core (Triton's TensorRT backend); with GPU + DLA0 + DLA1 engines each gets its own model and
  group, since one Triton model serves one plan file.

The model takes the contract's normalised input, as the engine does; the client applies the contract
(recorded in handoff.json beside the repository). config.pbtxt is protobuf text format, written here
without protobuf (the device has none) and checked in the tests by Triton's own model_config_pb2.
"""

import os
import shutil
from typing import Any, Dict, List, Optional, Sequence

from ..artifacts import write_json_atomic, write_text_atomic
from ..errors import EdgekitError

PREFERRED_WITHIN = 0.05
CONFIG_FILE = "config.pbtxt"
MANIFEST_FILE = "handoff.json"
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
          "int32": "TYPE_INT32", "int64": "TYPE_INT64"}


class ModelIO(object):
    """One input or output: name, numpy dtype name, shape with the batch first (int, or None when dynamic)."""

    def __init__(self, name: str, dtype: str, shape: Sequence[Optional[int]]) -> None:
        if dtype not in DTYPES:
            raise EdgekitError("tensor {} is {}, which Triton's config here does not map".format(name, dtype))
        self.name, self.dtype, self.shape = name, dtype, list(shape)


def preferred_batches(result: Optional[Dict[str, Any]], max_batch: int) -> List[int]:
    """Offline batches whose measured throughput is within PREFERRED_WITHIN of the best, up to max_batch."""
    rows = ((result or {}).get("scenarios", {}).get("offline") or {}).get("rows", [])
    rows = [r for r in rows if r.get("throughput") and r["batch"] <= max_batch]
    if not rows:
        return []
    best = max(r["throughput"] for r in rows)
    return sorted(r["batch"] for r in rows if r["throughput"] >= (1.0 - PREFERRED_WITHIN) * best)


def max_batch_size(engine_meta: Optional[Dict[str, Any]], result: Optional[Dict[str, Any]],
                   dynamic: bool) -> int:
    """The engine profile's max batch (0: a static engine), else the sweep's largest batch (an ONNX)."""
    if engine_meta is not None:
        profile = engine_meta.get("profile") or {}
        low, high = (profile.get("min") or [1])[0], (profile.get("max") or [1])[0]
        return 0 if low == high else int(high)
    if not dynamic:
        return 0
    batches = ((result or {}).get("settings") or {}).get("batches") or [1]
    return int(max(batches))


def _dims(io: ModelIO, batched: bool) -> str:
    shape = io.shape[1:] if batched else io.shape
    return "[ {} ]".format(", ".join(str(d if d is not None else -1) for d in shape))


def _tensor(kind: str, io: ModelIO, batched: bool) -> str:
    return "{} [\n  {{\n    name: \"{}\"\n    data_type: {}\n    dims: {}\n  }}\n]".format(
        kind, io.name, DTYPES[io.dtype], _dims(io, batched))


def instance_group(dla_core: Optional[int]) -> str:
    """One instance on the GPU; for a DLA engine, with that DLA core as its secondary device."""
    dla = "" if dla_core is None else \
        "\n    secondary_devices [ {{ kind: KIND_NVDLA device_id: {} }} ]".format(dla_core)
    return "instance_group [\n  {{\n    kind: KIND_GPU\n    count: 1\n    gpus: [ 0 ]{}\n  }}\n]".format(dla)


def config_text(name: str, platform: str, max_batch: int, inputs: Sequence[ModelIO], outputs: Sequence[ModelIO],
                preferred: Sequence[int], dla_core: Optional[int], on_gpu: bool) -> str:
    """config.pbtxt in protobuf text format (Triton's ModelConfig)."""
    batched = max_batch > 0
    parts = ['name: "{}"'.format(name), 'platform: "{}"'.format(platform), "max_batch_size: {}".format(max_batch)]
    parts += [_tensor("input", io, batched) for io in inputs] + [_tensor("output", io, batched) for io in outputs]
    if batched:
        parts.append("dynamic_batching {{\n  preferred_batch_size: [ {} ]\n  max_queue_delay_microseconds: 100\n}}"
                     .format(", ".join(str(b) for b in preferred or [max_batch])))
    parts.append(instance_group(dla_core) if on_gpu else
                 "instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]")
    return "\n".join(parts) + "\n"


def model_name(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in text).strip("_")
    if not cleaned:
        raise EdgekitError("a Triton model needs a name of letters, digits, '_' or '-', got {!r}".format(text))
    return cleaned


def write(repo_dir: str, name: str, model_path: str, inputs: Sequence[ModelIO], outputs: Sequence[ModelIO],
          engine_meta: Optional[Dict[str, Any]] = None, result: Optional[Dict[str, Any]] = None,
          contract: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One model of the repository: `<repo>/<name>/config.pbtxt`, `<repo>/<name>/1/model.plan|onnx`."""
    name = model_name(name)
    is_engine = model_path.endswith((".engine", ".plan"))
    platform = "tensorrt_plan" if is_engine else "onnxruntime_onnx"
    dynamic = inputs[0].shape[0] is None
    max_batch = max_batch_size(engine_meta if is_engine else None, result, dynamic)
    preferred = preferred_batches(result, max_batch) if max_batch else []
    dla_core = (engine_meta or {}).get("dla_core") if is_engine else None
    on_gpu = is_engine or ((result or {}).get("labels") or {}).get("placement") == "gpu"
    folder = os.path.join(repo_dir, name)
    os.makedirs(os.path.join(folder, "1"), exist_ok=True)
    target = os.path.join(folder, "1", "model.plan" if is_engine else "model.onnx")
    if not (os.path.exists(target) and os.path.samefile(model_path, target)):
        shutil.copyfile(model_path, target + ".tmp")
        os.replace(target + ".tmp", target)
    text = config_text(name, platform, max_batch, inputs, outputs, preferred, dla_core, on_gpu)
    write_text_atomic(os.path.join(folder, CONFIG_FILE), text)
    manifest = {"kind": "triton", "name": name, "platform": platform, "max_batch_size": max_batch,
                "preferred_batch_size": preferred, "dla_core": dla_core, "model": os.path.relpath(target, repo_dir),
                "from": model_path, "preprocessing": contract,
                "offline_sweep": [{"batch": r["batch"], "throughput": r["throughput"]} for r in
                                  ((result or {}).get("scenarios", {}).get("offline") or {}).get("rows", [])]}
    write_json_atomic(os.path.join(folder, MANIFEST_FILE), manifest)
    return manifest
