"""The engine twin: the exported Q/DQ model's top-1 against a fake-quant reference made independently.

The Q/DQ ONNX's top-1 in onnxruntime is what every TensorRT INT8 engine built from it is checked
against, so it must be the quantized model it claims to be. It is scored with onnxruntime's graph
optimizations off (`evaluate`: the graph's own semantics, what TensorRT computes); the optimized CPU
figure is recorded beside it. The PTQ reference is built apart from
the export: from the FP32 model, the calibration ranges and the kept-layer list, with plain float ops
(x -> clip(round(x / s), -128, 127) * s on each quantized activation, weights fake-quantized in numpy),
not with onnxruntime's quantizer and Q/DQ kernels. A wrong scale, a lost or extra Q/DQ pair, or a
kernel that saturates shows as a gap. `check_twin` takes any two top-1s (QAT will bring its PyTorch
fake-quant model's) and fails beyond the tolerance with the numbers.
"""

import hashlib
from typing import Any, Dict, Iterable, Optional, Set

import numpy as np

from ....errors import EdgekitError
from .calibrate import Ranges
from .evaluate import Batches, top1
from .qdq import residual_index

TWIN_TOLERANCE = 0.5   # top-1 points


def check_twin(reference_top1: float, model_top1: float, images: np.ndarray, reference: str, model: str,
               tolerance: float = TWIN_TOLERANCE) -> Dict[str, Any]:
    """The twin record of two top-1s measured on the same `images`; EdgekitError beyond `tolerance`."""
    gap = round(abs(float(model_top1) - float(reference_top1)), 3)
    record = {"reference": reference, "reference_top1": reference_top1, "model": model, "model_top1": model_top1,
              "gap": gap, "tolerance": tolerance, "images": int(len(images)),
              "images_sha256": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16],
              "ok": gap <= tolerance}
    if not record["ok"]:
        raise EdgekitError("{} scores {:.2f}% top-1 but its fake-quant reference ({}) {:.2f}% on the same {} images: "
                           "a gap of {:.2f} points, over the {} allowed; the export does not hold the quantization "
                           "it was given (re-run with --force-stage quantize, and report it if it stays)".format(
                               model, model_top1, reference, reference_top1, len(images), gap, tolerance))
    return record


def _fake_quant_weight(w: np.ndarray, per_channel: bool) -> np.ndarray:
    axes = tuple(range(1, w.ndim)) if per_channel else None
    amax = np.abs(w).max(axis=axes, keepdims=per_channel) if per_channel else np.abs(w).max()
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)


class _Builder(object):
    """Inserts fake-quant ops into an FP32 graph, one set per tensor."""

    def __init__(self, model: Any, ranges: Ranges) -> None:
        self.model, self.ranges = model, ranges
        self.done: Dict[str, str] = {}
        self.nodes: list = []

    def activation(self, tensor: str) -> str:
        from onnx import helper, numpy_helper

        if tensor in self.done:
            return self.done[tensor]
        if tensor not in self.ranges:
            raise EdgekitError("no calibration range for tensor {}; recalibrate".format(tensor))
        amax = max(abs(self.ranges[tensor][0]), abs(self.ranges[tensor][1]))
        base = tensor + "_fq"
        self.model.graph.initializer.extend([
            numpy_helper.from_array(np.array(amax / 127.0 if amax > 0 else 1.0, dtype=np.float32), base + "_s"),
            numpy_helper.from_array(np.array(-128.0, dtype=np.float32), base + "_lo"),
            numpy_helper.from_array(np.array(127.0, dtype=np.float32), base + "_hi")])
        self.nodes += [helper.make_node("Div", [tensor, base + "_s"], [base + "_d"]),
                       helper.make_node("Round", [base + "_d"], [base + "_r"]),
                       helper.make_node("Clip", [base + "_r", base + "_lo", base + "_hi"], [base + "_c"]),
                       helper.make_node("Mul", [base + "_c", base + "_s"], [base])]
        self.done[tensor] = base
        return base


def fake_quant_reference(fp32_model: Any, ranges: Ranges, keep: Iterable[str] = (), per_channel: bool = True) -> Any:
    """The FP32 model with the INT8 quantization simulated in float ops: what the Q/DQ export must equal."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(fp32_model.SerializeToString())
    keep = set(keep)
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    builder = _Builder(model, ranges)
    quantized: Set[str] = {n.input[0] for n in graph.node if n.op_type == "Conv" and n.name not in keep}
    for node in graph.node:
        if node.op_type == "Conv" and node.name not in keep:
            node.input[0] = builder.activation(node.input[0])
            weight = weights[node.input[1]]
            faked = _fake_quant_weight(numpy_helper.to_array(weight), per_channel)
            graph.initializer.append(numpy_helper.from_array(faked, weight.name + "_fq"))
            node.input[1] = weight.name + "_fq"
        elif node.op_type == "Add":
            _residual(node, producer, quantized, keep, builder)
    _place_first(graph, builder.nodes)
    onnx.checker.check_model(model)
    return model


def _residual(add: Any, producer: Dict[str, Any], quantized: Set[str], keep: Set[str], builder: _Builder) -> None:
    index: Optional[int] = residual_index(add, producer, quantized)
    if index is None:
        return
    fused = producer.get(add.input[1 - index])
    if getattr(fused, "op_type", None) == "Conv" and fused.name not in keep:
        add.input[index] = builder.activation(add.input[index])


def _place_first(graph: Any, nodes: list) -> None:
    """Topological order: each fake-quant chain right after the node producing its tensor."""
    after: Dict[str, list] = {}
    for k in range(0, len(nodes), 4):
        after.setdefault(nodes[k].input[0], []).extend(nodes[k:k + 4])
    ordered = list(after.pop(graph.input[0].name, [])) if graph.input else []
    for node in graph.node:
        ordered.append(node)
        for out in node.output:
            ordered.extend(after.pop(out, []))
    del graph.node[:]
    graph.node.extend(ordered)


def ptq_twin(fp32_model: Any, ranges: Ranges, keep: Iterable[str], per_channel: bool, qdq_path: str,
             batches: Batches, threads: Optional[int] = None) -> Dict[str, Any]:
    """The PTQ twin check of the Q/DQ file at `qdq_path` on `batches` (fails beyond the tolerance)."""
    import os

    reference = fake_quant_reference(fp32_model, ranges, keep, per_channel)
    images = np.concatenate([x for x, _ in batches()])
    record = check_twin(top1(reference, batches, threads), top1(qdq_path, batches, threads), images,
                        "fp32 + calib.ranges.json, float fake-quant", os.path.basename(qdq_path))
    # what onnxruntime's CPU fusions make of the same file (the measure stage's figure): recorded, since
    # it need not be what an engine computes
    record["onnxruntime_optimized_top1"] = top1(qdq_path, batches, threads, exact=False)
    record["onnxruntime_optimized_gap"] = round(abs(record["onnxruntime_optimized_top1"] - record["reference_top1"]), 3)
    return record
