"""`edgekit handoff deepstream`: an nvinfer config, a labels file and the model it runs, in one folder.

nvinfer preprocesses every frame as y = net-scale-factor * (x - offsets[c]) on 8-bit pixels x: one scale
for all channels. The contract asks for y = (x / 255 - mean[c]) / std[c], so:
- one std for all channels (the digits default, any grey model): exact in nvinfer's own terms,
  net-scale-factor = 1 / (255 std), offsets = 255 mean[c];
- a std per channel (ImageNet's 0.229/0.224/0.225): nvinfer cannot express it. The normalisation is
  then folded into the model as a per-channel Mul and Add at its input (graph.py: exact, where folding
  it into the first convolution is not at the zero-padded borders), and nvinfer passes raw pixels
  (net-scale-factor 1, offsets 0). Exact beats an approximation whose top-1 cost depends on the data.

Either way the model gets a Softmax at its output, so nvinfer's classifier parser (largest output above
classifier-threshold and above 0) labels every frame with the arg-max. The engine nvinfer loads is the
one built from that model when one is beside it (its metadata names the ONNX); otherwise the config
names only onnx-file and nvinfer builds the engine on first start, with network-mode and, for implicit
INT8 on DLA, int8-calib-file.
"""

import json
import os
from typing import Any, Callable, Dict, List, Optional

from ..artifacts import write_json_atomic, write_text_atomic
from ..errors import EdgekitError
from . import graph

# nvinfer's [property] keys: the CONFIG_GROUP_INFER_* names of gstnvinfer_property_parser.h (DeepStream 6.x
# sources, sources/gst-plugins/gst-nvinfer/), the "Gst-nvinfer Property Group Supported Keys" of the plugin
# guide (docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html), plus the keys the
# 6.4 header adds (disable-output-host-copy, auto-inc-mem, max-gpu-mem-per, dump-input/output-tensor).
NVINFER_PROPERTY_KEYS = frozenset((
    "parse-func", "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id",
    "secondary-reinfer-interval", "output-tensor-meta", "enable-dla", "use-dla-core", "batch-size",
    "tensor-meta-pool-size", "network-mode", "model-engine-file", "int8-calib-file", "workspace-size",
    "output-blob-names", "is-classifier", "network-type", "force-implicit-batch-dim", "infer-dims",
    "output-io-formats", "layer-device-precision", "model-color-format", "net-scale-factor", "offsets",
    "mean-file", "maintain-aspect-ratio", "symmetric-padding", "scaling-filter", "scaling-compute-hw",
    "network-input-order", "input-tensor-from-meta", "custom-lib-path", "parse-bbox-func-name",
    "parse-bbox-instance-mask-func-name", "engine-create-func-name", "parse-classifier-func-name",
    "custom-network-config", "model-file", "proto-file", "uff-file", "uff-input-order", "input-dims",
    "uff-input-dims", "uff-input-blob-name", "tlt-encoded-model", "tlt-model-key", "onnx-file",
    "num-detected-classes", "enable-dbscan", "cluster-mode", "classifier-type", "classifier-threshold",
    "classifier-async-mode", "segmentation-threshold", "segmentation-output-order", "output-instance-mask",
    "input-object-min-width", "input-object-min-height", "input-object-max-width", "input-object-max-height",
    "operate-on-gie-id", "operate-on-class-ids", "filter-out-class-ids", "disable-output-host-copy",
    "auto-inc-mem", "max-gpu-mem-per", "dump-input-tensor", "dump-output-tensor",
))
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
# nvinfer's model-color-format: 0 RGB, 1 BGR, 2 GRAY (one channel). A GRAY contract repeats the grey
# channel three times, which an RGB frame of a grey image is.
COLOR_FORMATS = {"RGB": 0, "BGR": 1, "GRAY": 0}
NETWORK_TYPE_CLASSIFIER = 1
PIXEL_MAX = 255.0  # nvinfer's x: 8-bit pixels
CONFIG_FILE = "config_infer_primary.txt"
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "handoff.json"


def nvinfer_normalisation(contract: Dict[str, Any]) -> Dict[str, Any]:
    """net-scale-factor and offsets for the contract, and whether the model must take the std instead."""
    mean, std = [float(m) for m in contract["mean"]], [float(s) for s in contract["std"]]
    if max(std) - min(std) <= 1e-9 * max(std):
        return {"net-scale-factor": 1.0 / (PIXEL_MAX * std[0]), "offsets": [PIXEL_MAX * m for m in mean],
                "folded": False, "why": "one std for all channels: nvinfer's y = k (x - offsets) is the contract"}
    return {"net-scale-factor": 1.0, "offsets": [0.0, 0.0, 0.0], "folded": True,
            "why": "std differs per channel ({}): folded into the model as a per-channel Mul and Add at its input, "
                   "nvinfer passes raw 0-255 pixels".format(", ".join("{:g}".format(s) for s in std))}


def _number(value: float) -> str:
    return repr(float(value))


def labels_line(labels: List[str]) -> str:
    """A classifier's labels file: one line per output layer, labels separated by ';'."""
    bad = [label for label in labels if ";" in label or "\n" in label]
    if bad:
        raise EdgekitError("class name {!r} holds ';' or a newline, which nvinfer's labels file cannot carry; rename "
                           "that class folder".format(bad[0]))
    return ";".join(labels) + "\n"


def config_text(properties: Dict[str, Any], note: str) -> str:
    """A GLib key file: the [property] group nvinfer reads; every key in nvinfer's documented set."""
    unknown = sorted(set(properties) - NVINFER_PROPERTY_KEYS)
    if unknown:
        raise ValueError("not nvinfer [property] keys: {}".format(", ".join(unknown)))
    lines = ["# {}".format(line) for line in note.splitlines()] + ["[property]"]
    for key, value in properties.items():
        if isinstance(value, (list, tuple)):
            value = ";".join(_number(v) if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, float):
            value = _number(value)
        lines.append("{}={}".format(key, value))
    return "\n".join(lines) + "\n"


def properties(contract: Dict[str, Any], norm: Dict[str, Any], model_file: str, precision: str, batch: int,
               engine: Optional[str], dla_core: Optional[int], calibration_cache: Optional[str]) -> Dict[str, Any]:
    """The [property] group, paths relative to the config's folder (nvinfer resolves them from there)."""
    props: Dict[str, Any] = {"gpu-id": 0, "gie-unique-id": 1, "process-mode": 1, "onnx-file": model_file}
    if engine:
        props["model-engine-file"] = engine
    if calibration_cache:
        props["int8-calib-file"] = calibration_cache
    props.update({"network-mode": NETWORK_MODES[precision], "enable-dla": 1 if dla_core is not None else 0})
    if dla_core is not None:
        props["use-dla-core"] = dla_core
    props.update({"batch-size": batch, "network-type": NETWORK_TYPE_CLASSIFIER, "classifier-threshold": 0.0,
                  "model-color-format": COLOR_FORMATS[contract["color_order"]], "labelfile-path": LABELS_FILE,
                  "net-scale-factor": norm["net-scale-factor"], "offsets": norm["offsets"],
                  "output-blob-names": graph.PROBABILITIES})
    return props


def engine_built_from(onnx_path: str) -> Optional[str]:
    """An engine beside `onnx_path` whose metadata names it (as `edgekit build-engine` leaves one)."""
    from ..device.runtime.registry import engine_built_from as found

    return found(onnx_path)


def write(out_dir: str, onnx_path: str, contract: Dict[str, Any], precision: str, batch: int = 1,
          dla_core: Optional[int] = None, calibration_cache: Optional[str] = None,
          source: Optional[Dict[str, Any]] = None, build: Optional[Callable[[str], str]] = None) -> Dict[str, Any]:
    """The DeepStream package in `out_dir`: the model (the ONNX's own file name, so its flavour still shows), its
    engine when built, labels.txt, the nvinfer config and handoff.json (what was done and why). `source`: what
    was measured (engine, result), for the record; `build(model) -> engine`: builds its engine here."""
    if precision not in NETWORK_MODES:
        raise EdgekitError("precision must be one of {}, got {!r}".format(", ".join(NETWORK_MODES), precision))
    os.makedirs(out_dir, exist_ok=True)
    norm = nvinfer_normalisation(contract)
    model = os.path.join(out_dir, os.path.basename(onnx_path))
    names = graph.rewrite(onnx_path, model, contract, fold=norm["folded"])
    engine = build(model) if build is not None else engine_built_from(model)
    calib = None
    if calibration_cache:
        calib = os.path.basename(calibration_cache)
        _copy(calibration_cache, os.path.join(out_dir, calib))
    props = properties(contract, norm, os.path.basename(model), precision, batch,
                       os.path.basename(engine) if engine else None, dla_core, calib)
    write_text_atomic(os.path.join(out_dir, LABELS_FILE), labels_line(list(contract["labels"])))
    note = "edgekit hand-off for DeepStream nvinfer: {}\npreprocessing: {}".format(
        os.path.basename(onnx_path), norm["why"])
    write_text_atomic(os.path.join(out_dir, CONFIG_FILE), config_text(props, note))
    manifest = {"kind": "deepstream", "config": CONFIG_FILE, "labels": LABELS_FILE, "model": os.path.basename(model),
                "engine": os.path.basename(engine) if engine else None, "from_onnx": onnx_path,
                "model_io": names, "normalisation": norm, "preprocessing": contract, "source": source or {},
                "engine_note": None if engine else "no engine built from this model here: nvinfer builds one from "
                                                   "onnx-file on first start"}
    write_json_atomic(os.path.join(out_dir, MANIFEST_FILE), manifest)
    return manifest


def _copy(source: str, destination: str) -> None:
    with open(source, "rb") as f:
        data = f.read()
    from ..artifacts import atomic_path

    with atomic_path(destination) as tmp, open(tmp, "wb") as out:
        out.write(data)


def read_manifest(folder: str) -> Dict[str, Any]:
    with open(os.path.join(folder, MANIFEST_FILE), encoding="utf-8") as f:
        return json.load(f)
