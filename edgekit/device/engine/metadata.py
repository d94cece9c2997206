"""Engine metadata: the JSON beside every engine, and the pure check that refuses a mismatch.

Engines are tied to the GPU model (compute capability, and for DLA the DLA core) and to the exact
TensorRT version; loading one built elsewhere fails deep inside TensorRT with "version tag does
not match". The check here says instead where the engine was built and how to rebuild it.
"""

import json
import os
import time
from typing import Any, Dict, Optional

from ... import __version__
from ...artifacts import write_json_atomic
from ...errors import EdgekitError

SCHEMA = "edgekit.device.engine"
SCHEMA_VERSION = 1


class EngineMetadata(dict):
    """A dict with the fields below; `metadata_path(engine)` is where it lives."""

    FIELDS = ("tensorrt_version", "device_name", "compute_capability", "dla_core", "precision", "profile",
              "onnx_path", "onnx_sha256", "built_at", "build_seconds", "flags", "workspace_mb", "l4t")

    @classmethod
    def create(cls, **fields: Any) -> "EngineMetadata":
        unknown = set(fields) - set(cls.FIELDS)
        if unknown:
            raise ValueError("unknown metadata fields: {}".format(sorted(unknown)))
        meta = cls({k: fields.get(k) for k in cls.FIELDS})
        meta.update(schema=SCHEMA, schema_version=SCHEMA_VERSION, edgekit=__version__)
        meta.setdefault("built_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if meta["built_at"] is None:
            meta["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return meta


def metadata_path(engine_path: str) -> str:
    return engine_path + ".json"


def save_metadata(engine_path: str, meta: Dict[str, Any]) -> str:
    path = metadata_path(engine_path)
    write_json_atomic(path, dict(meta))
    return path


def load_metadata(engine_path: str) -> Dict[str, Any]:
    path = metadata_path(engine_path)
    if not os.path.exists(path):
        raise EdgekitError("{} has no metadata ({}): rebuild it with edgekit build-engine so edgekit knows "
                           "what it was built for".format(engine_path, os.path.basename(path)))
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read engine metadata {}: {}".format(path, exc)) from None
    if meta.get("schema") != SCHEMA:
        raise EdgekitError("{} is not edgekit engine metadata".format(path))
    return meta


def check_compatible(meta: Dict[str, Any], tensorrt_version: str, device_name: str,
                     compute_capability: str, dla_cores: Optional[int] = None,
                     engine_path: str = "the engine") -> None:
    """Raise EdgekitError when an engine built as `meta` says cannot run here; None when it can."""
    built = "{} (compute {}) with TensorRT {}".format(meta.get("device_name"), meta.get("compute_capability"),
                                                     meta.get("tensorrt_version"))
    here = "{} (compute {}) with TensorRT {}".format(device_name, compute_capability, tensorrt_version)
    how = "; rebuild it here: edgekit build-engine {}".format(meta.get("onnx_path") or "<model.onnx>")
    if meta.get("tensorrt_version") != tensorrt_version:
        raise EdgekitError("{} was built on {}, this is {}: engines only load in the TensorRT version that "
                           "built them{}".format(engine_path, built, here, how))
    if str(meta.get("compute_capability")) != str(compute_capability):
        raise EdgekitError("{} was built on {}, this is {}: engines are tied to the GPU they were built "
                           "for{}".format(engine_path, built, here, how))
    core = meta.get("dla_core")
    if core is not None and (dla_cores is None or int(core) >= dla_cores):
        raise EdgekitError("{} runs on DLA core {} but this device has {} DLA core(s){}".format(
            engine_path, core, dla_cores or 0, how))
