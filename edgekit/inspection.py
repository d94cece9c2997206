"""`edgekit inspect`: what a model file is, in a user's units.

Two kinds of file: a PyTorch checkpoint (a torchvision ResNet-50 or an edgekit teacher/student; read by
the host side, so torch is imported only for those) and an ONNX model (read with `onnx` alone: opset,
inputs and outputs, node count, MACs of its convolutions and matrix products from ONNX's own shape
inference, and the precision and flavour the artifact layout gives its name). A checkpoint's MACs are
torch-pruning's count, which also counts BatchNorm, ReLU and pooling elements: about 1% more than the
ONNX count of the same model, whose BatchNorms the export folded away. A checkpoint is counted at
the image size the model was trained at: `--image-size`, else the size its file records, else the
size in summary.json beside it, else 224.
"""

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from .device import layout
from .errors import EdgekitError
from .lazy import lazy_import

DEFAULT_IMAGE_SIZE = 224
# Serialised ONNX models start with field 1 (ir_version, a varint): the byte 0x08. A PyTorch
# checkpoint is a zip ("PK") or a pickle (0x80), so one byte tells them apart without parsing.
ONNX_FIRST_BYTE = b"\x08"
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def is_onnx(path: str) -> bool:
    if path.endswith(".onnx"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(1) == ONNX_FIRST_BYTE
    except OSError:
        return False


def inspect_model(path: str, image_size: Optional[int] = None, width_spec: bool = False) -> Dict[str, Any]:
    """The facts `edgekit inspect` prints, as plain data."""
    if not os.path.exists(path):
        raise EdgekitError("{} does not exist: give a .pt/.pth checkpoint or an .onnx model".format(path))
    if is_onnx(path):
        return onnx_facts(path)
    return checkpoint_facts(path, image_size, width_spec)


# --------------------------------------------------------------------------- PyTorch checkpoints

def recorded_image_size(path: str, meta: Dict[str, Any]) -> Tuple[int, str]:
    """(size, where it came from): the file's own record, summary.json beside it, else 224."""
    if isinstance(meta.get("image_size"), int):
        return meta["image_size"], "recorded in the file"
    summary = os.path.join(os.path.dirname(os.path.abspath(path)), layout.SUMMARY)
    try:
        with open(summary, encoding="utf-8") as f:
            shape = json.load(f).get("input_shape")
        if isinstance(shape, list) and shape and isinstance(shape[-1], int):
            return shape[-1], "from {} beside it".format(layout.SUMMARY)
    except (OSError, ValueError, AttributeError):
        pass
    return DEFAULT_IMAGE_SIZE, "the default; give --image-size for the size it was trained at"


def checkpoint_facts(path: str, image_size: Optional[int], width_spec: bool) -> Dict[str, Any]:
    from .host.models import count_macs_params, load_resnet50_checkpoint, widths_summary

    model, info = load_resnet50_checkpoint(path, log=lambda _: None)
    meta = info.get("meta") or {}
    size, source = (image_size, "--image-size") if image_size else recorded_image_size(path, meta)
    macs, params = count_macs_params(model, size)
    facts = {"path": path, "format": "pytorch", "role": meta.get("role") or "checkpoint",
             "num_classes": info["num_classes"], "image_size": size, "image_size_from": source, "macs": macs,
             "params": params, "stage_widths": widths_summary(info["width_spec"])}
    if width_spec:
        facts["width_spec"] = info["width_spec"]
    return facts


# --------------------------------------------------------------------------- ONNX models

def _dims(value_info: Any) -> Optional[List[Any]]:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]


def _io(values: Any, onnx: Any) -> List[Dict[str, Any]]:
    names = {v: k for k, v in onnx.TensorProto.DataType.items()}
    return [{"name": v.name, "type": names.get(v.type.tensor_type.elem_type, "?").lower(), "shape": _dims(v)}
            for v in values]


def _shapes_at_batch_1(model: Any, onnx: Any) -> Dict[str, List[int]]:
    """Every tensor's shape with the batch dimension set to 1, by ONNX's own shape inference."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {i.name for i in copy.graph.initializer}
    for value in copy.graph.input:
        if value.name not in initializers:
            for dim in value.type.tensor_type.shape.dim:
                if not dim.HasField("dim_value"):
                    dim.dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph ONNX cannot infer still gets its other facts
        inferred = copy
    graph = inferred.graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = _dims(value)
        if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
            shapes[value.name] = dims
    return shapes


def _product(values: List[int]) -> int:
    total = 1
    for v in values:
        total *= v
    return total


def _node_macs(node: Any, shapes: Dict[str, List[int]]) -> Optional[int]:
    """Multiply-accumulates of one node at batch 1, or None when a shape is unknown."""
    out = shapes.get(node.output[0]) if node.output else None
    if out is None or len(node.input) < 2 or node.input[0] not in shapes or node.input[1] not in shapes:
        return None
    a, b = shapes[node.input[0]], shapes[node.input[1]]
    if node.op_type == "Conv":
        return _product(out) * _product(b[1:])      # each output: Cin/groups x kh x kw products
    if node.op_type == "ConvTranspose":
        return _product(a) * _product(b[1:])        # each input element spreads over Cout/groups x kh x kw
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return _product(out) * (a[0] if trans_a else a[-1])
    return _product(out) * a[-1]                    # MatMul


def _weight_source(name: str, producers: Dict[str, Any], initializers: Dict[str, Any]) -> Optional[str]:
    """The initializer a weight input comes from, through Q/DQ and Cast nodes (INT8 and FP16 models)."""
    seen = 0
    while name not in initializers and name in producers and seen < 4:
        node = producers[name]
        if node.op_type not in ("DequantizeLinear", "QuantizeLinear", "Cast", "Identity"):
            return None
        name, seen = node.input[0], seen + 1
    return name if name in initializers else None


def _param_count(graph: Any) -> int:
    """Weights and biases of the layers that have them, each initializer once."""
    initializers = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    counted = set()
    for node in graph.node:
        if node.op_type not in MAC_OPS + ("BatchNormalization",):
            continue
        for name in node.input[1:]:
            source = _weight_source(name, producers, initializers) if name else None
            if source is not None:
                counted.add(source)
    return sum(_product(list(initializers[name].dims)) for name in counted)


def _flavour(path: str, graph: Any, onnx: Any) -> Dict[str, Any]:
    known = layout.model_file(path)
    if known:
        return {"precision": known.precision, "flavour": known.flavour, "for": known.description}
    ops = {n.op_type for n in graph.node}
    fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    precision = layout.precision_of(path) or ("int8" if "QuantizeLinear" in ops else "fp16" if fp16 else "fp32")
    return {"precision": precision, "flavour": "qdq" if "QuantizeLinear" in ops else "plain", "for": None}


def onnx_facts(path: str) -> Dict[str, Any]:
    onnx = lazy_import("onnx")
    try:
        model = onnx.load(path)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise EdgekitError("{} is not a readable ONNX file ({}): re-export it".format(
            path, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__)) from None
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    shapes = _shapes_at_batch_1(model, onnx)
    per_node = [_node_macs(n, shapes) for n in graph.node if n.op_type in MAC_OPS]
    inputs = _io([v for v in graph.input if v.name not in initializers], onnx)
    spatial = inputs[0]["shape"][-1] if inputs and inputs[0]["shape"] else None
    facts = {"path": path, "format": "onnx",
             "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
             "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p) or None,
             "inputs": inputs, "outputs": _io(graph.output, onnx), "nodes": len(graph.node),
             "image_size": spatial if isinstance(spatial, int) else None,
             "macs": sum(m for m in per_node if m is not None) if per_node and None not in per_node else None,
             "params": _param_count(graph)}
    facts.update(_flavour(path, graph, onnx))
    return facts


# --------------------------------------------------------------------------- printing

def human(count: Optional[float]) -> str:
    """167.6 M, 2.34 M, 4.12 G: counts as a user reads them."""
    if count is None:
        return "unknown"
    for scale, unit, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if abs(count) >= scale:
            value = count / scale
            return "{:.{}f} {}".format(value, 1 if value >= 100 else digits, unit)
    return str(int(count))


def _shape(dims: Optional[List[Any]]) -> str:
    return "x".join(str(d) for d in dims) if dims is not None else "unknown"


def describe(facts: Dict[str, Any]) -> List[str]:
    """The human-readable report, one fact a line."""
    if facts["format"] == "onnx":
        lines = ["{}: ONNX, opset {}, {} nodes{}".format(facts["path"], facts["opset"], facts["nodes"],
                                                          ", by " + facts["producer"] if facts["producer"] else "")]
        lines.append("  precision   {} ({}{})".format(facts["precision"], facts["flavour"],
                                                       ", for " + facts["for"] if facts["for"] else ""))
        lines += ["  input       {} {} {}".format(v["name"], v["type"], _shape(v["shape"])) for v in facts["inputs"]]
        lines += ["  output      {} {} {}".format(v["name"], v["type"], _shape(v["shape"])) for v in facts["outputs"]]
        lines.append("  MACs        {} MACs (batch 1, convolutions and matrix products)".format(human(facts["macs"])))
    else:
        lines = ["{}: PyTorch {}, {} classes".format(facts["path"], facts["role"], facts["num_classes"])]
        lines.append("  image size  {} ({})".format(facts["image_size"], facts["image_size_from"]))
        lines.append("  MACs        {} MACs (batch 1, {}x{})".format(human(facts["macs"]), facts["image_size"],
                                                                       facts["image_size"]))
        lines.append("  widths      {}".format(", ".join(str(w) for w in facts["stage_widths"])))
    lines.append("  params      {} params".format(human(facts["params"])))
    return lines
