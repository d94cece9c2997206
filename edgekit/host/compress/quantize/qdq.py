"""The INT8 flavours written from one set of ranges, and the graph edits both need.

- TensorRT (explicit Q/DQ): symmetric int8 activations (zero points 0), int8 symmetric weights
  (per channel, or per tensor with `per_channel=False`) kept FP32 behind a Q->DQ pair as TensorRT 8.x's
  developer guide asks, Q/DQ on every convolution's inputs only (an output Q/DQ between a convolution
  and the Add it feeds blocks TensorRT's conv+add fusion), biases FP32 (8.5 dequantizes int8 only), and
  a Q/DQ pair on the residual input of every Add a quantized convolution feeds, so that TensorRT fuses
  the Add into that convolution instead of running it in FP16 (its Q/DQ placement guide). The
  classifier stays FP32.
- onnxruntime CPU: uint8 activations, int8 weights, every op onnxruntime quantizes, Q/DQ format (its CPU
  provider fuses it into QLinearConv); `nodes_to_exclude` keeps layers in float.

A layer kept in float has no Q/DQ around it: `keep_float` rewires it (and the residual input of the Add
it feeds) past the dequantization and drops the pairs nobody reads any more. That graph is valid for
TensorRT 8.5's explicit INT8 (the layer runs FP16 with the FP16 flag beside INT8) and for TensorRT 11's
strongly typed networks (where it runs in the ONNX type, FP32).
"""

import os
import tempfile
import warnings
from typing import Dict, Iterable, List, Optional, Set

import numpy as np

from ....artifacts import atomic_path
from ....errors import EdgekitError
from .calibrate import Ranges, quiet, write_ort_cache


def _quantize_static(fp32_path: str, dst: str, ranges: Ranges, **options) -> None:  # noqa: ANN003
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as tmp, warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        cache = os.path.join(tmp, "ranges.json")
        write_ort_cache(cache, ranges)
        quantize_static(fp32_path, dst, None, quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=cache, **options)


def write_cpu(fp32_path: str, dst: str, ranges: Ranges, per_channel: bool = True, reduce_range: bool = True,
              exclude: Iterable[str] = ()) -> str:
    """The onnxruntime CPU flavour.

    `reduce_range` keeps weights to 7 bits: on x86 CPUs without VNNI (AVX2 only, like CI's), the u8×s8
    multiply-add instruction saturates its 16-bit pair sums with full 8-bit weights and top-1 drops
    (measured on the digits student: 96.94% with 8-bit weights, 98.05% with 7, FP32 98.05%).
    """
    from onnxruntime.quantization import QuantType

    with atomic_path(dst) as tmp:
        _quantize_static(fp32_path, tmp, ranges, per_channel=per_channel, reduce_range=reduce_range,
                         activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                         nodes_to_exclude=sorted(exclude))
    return dst


def write_tensorrt(fp32_path: str, dst: str, ranges: Ranges, per_channel: bool = True,
                   keep: Iterable[str] = ()) -> Dict[str, int]:
    """The TensorRT Q/DQ flavour, with the `keep` convolutions in float; returns what it placed."""
    import onnx
    from onnxruntime.quantization import QuantType

    with atomic_path(dst) as tmp:
        _quantize_static(fp32_path, tmp, ranges, per_channel=per_channel, activation_type=QuantType.QInt8,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                         extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                        "QuantizeBias": False, "AddQDQPairToWeight": True,
                                        "OpTypesToExcludeOutputQuantization": ["Conv"]})
        model = onnx.load(tmp)
        residuals = add_residual_qdq(model, ranges)
        model = keep_float(model, keep)
        onnx.checker.check_model(model)
        onnx.save(model, tmp)
    return {"residual_qdq_added": residuals, "quantized_convs": len(quantized_convs(model)),
            "kept": len(set(keep))}


# --------------------------------------------------------------------------- graph edits

def _producers(graph) -> Dict[str, object]:  # noqa: ANN001
    return {o: n for n in graph.node for o in n.output}


def _float_source(name: str, producer: Dict[str, object]) -> str:
    """The float tensor behind a QuantizeLinear->DequantizeLinear pair (`name` itself otherwise)."""
    dq = producer.get(name)
    if getattr(dq, "op_type", None) != "DequantizeLinear":
        return name
    q = producer.get(dq.input[0])  # type: ignore[union-attr]
    return q.input[0] if getattr(q, "op_type", None) == "QuantizeLinear" else name  # type: ignore[union-attr]


def residual_index(add, producer: Dict[str, object], quantized: Set[str]) -> Optional[int]:  # noqa: ANN001
    """Which input of a two-input Add is its residual (the one TensorRT wants through Q/DQ), or None when
    no convolution feeds the Add. The other input is the convolution TensorRT fuses the Add into. Of
    two convolution outputs, the one that already has a Q/DQ pair (another convolution reads it, as in
    MobileNetV2's `x + conv(x)`), else torchvision ResNet's `out += identity`: input 1.
    """
    if len(add.input) != 2:
        return None
    sources = [_float_source(i, producer) for i in add.input]
    convs = [getattr(producer.get(s), "op_type", None) == "Conv" for s in sources]
    if not any(convs):
        return None
    if not all(convs):
        return convs.index(False)
    shared = [s in quantized for s in sources]
    return shared.index(True) if any(shared) and not all(shared) else 1


def add_residual_qdq(model, ranges: Ranges) -> int:  # noqa: ANN001
    """Put a symmetric int8 Q/DQ pair on the residual input of every Add (in place); return how many.
    An existing pair on the same tensor (a convolution already reads it through one) is shared."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    producer = _producers(graph)
    pair_of = {_float_source(n.output[0], producer): n.output[0] for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] not in initializers}
    before: Dict[str, list] = {}
    added = 0
    for node in graph.node:
        if node.op_type != "Add" or set(node.input) & initializers:
            continue
        index = residual_index(node, producer, set(pair_of))
        if index is None or node.input[index] in pair_of.values():
            continue
        residual = node.input[index]
        if residual not in pair_of:
            if residual not in ranges:
                raise EdgekitError("no calibration range for tensor {} (input of {}); recalibrate".format(
                    residual, node.name))
            amax = max(abs(ranges[residual][0]), abs(ranges[residual][1])) or 1.0
            base = residual + "_residual"
            graph.initializer.extend([
                numpy_helper.from_array(np.array(amax / 127.0, dtype=np.float32), base + "_scale"),
                numpy_helper.from_array(np.array(0, dtype=np.int8), base + "_zero_point")])
            before.setdefault(node.name, []).extend([
                helper.make_node("QuantizeLinear", [residual, base + "_scale", base + "_zero_point"],
                                 [base + "_q"], name=base + "_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [base + "_q", base + "_scale", base + "_zero_point"],
                                 [base + "_dq"], name=base + "_DequantizeLinear")])
            pair_of[residual] = base + "_dq"
        node.input[index] = pair_of[residual]
        added += 1
    _insert_before(graph, before)
    return added


def _insert_before(graph, before: Dict[str, list]) -> None:  # noqa: ANN001
    """Keep the node list topologically sorted: each new pair goes right before the node reading it."""
    if not before:
        return
    ordered = []
    for node in graph.node:
        ordered.extend(before.get(node.name, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)


def quantized_convs(model) -> List[str]:  # noqa: ANN001
    """The convolutions of a Q/DQ model that read their activation through a DequantizeLinear, in order."""
    producer = _producers(model.graph)
    return [n.name for n in model.graph.node if n.op_type == "Conv"
            and getattr(producer.get(n.input[0]), "op_type", None) == "DequantizeLinear"]


def convolutions(model) -> List[str]:  # noqa: ANN001
    return [n.name for n in model.graph.node if n.op_type == "Conv"]


def keep_float(model, keep: Iterable[str]):  # noqa: ANN001, ANN201
    """A copy of the Q/DQ `model` with the `keep` convolutions in float: their inputs, and the residual
    input of the Add each one feeds, read the float tensors behind their Q/DQ pairs; pairs that nobody
    reads any more are dropped. Unknown names are an error (a stale kept-layer list)."""
    import onnx

    keep = set(keep)
    unknown = keep - set(convolutions(model))
    if unknown:
        raise EdgekitError("no convolution named {} in the model; the kept-layer list is stale".format(
            sorted(unknown)[0]))
    out = onnx.ModelProto.FromString(model.SerializeToString())
    producer = _producers(out.graph)
    for node in out.graph.node:
        if node.op_type == "Conv" and node.name in keep:
            _rewire(node, range(len(node.input)), producer)
        elif node.op_type == "Add" and any(getattr(producer.get(i), "name", None) in keep for i in node.input):
            # a kept convolution feeds this Add directly (residuals come through a DequantizeLinear)
            _rewire(node, range(len(node.input)), producer)
    drop_unused(out.graph)
    return out


def _rewire(node, indices: Iterable[int], producer: Dict[str, object]) -> None:  # noqa: ANN001
    for i in indices:
        if node.input[i]:
            node.input[i] = _float_source(node.input[i], producer)


def drop_unused(graph) -> None:  # noqa: ANN001
    """Remove nodes whose outputs nobody reads (repeatedly) and initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {i for n in graph.node for i in n.input} | outputs
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)


def fused_followers(model, conv: str) -> List[str]:  # noqa: ANN001
    """The nodes TensorRT fuses into convolution `conv` in implicit INT8: an activation right after it,
    the Add it feeds as the main branch, and the activation after that Add. Keeping `conv` in FP16
    means these run FP16 too (the Q/DQ flavour leaves them unquantized up to the next Q/DQ)."""
    consumers: Dict[str, List[object]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    start = next(n for n in model.graph.node if n.name == conv)
    found: List[str] = []
    current = start
    for kinds in (("Relu", "Clip", "HardSwish", "LeakyRelu"), ("Add",), ("Relu", "Clip", "HardSwish")):
        readers = consumers.get(current.output[0], [])
        if len(readers) == 1 and readers[0].op_type in kinds:  # type: ignore[union-attr]
            current = readers[0]
            found.append(current.name)  # type: ignore[union-attr]
    return found


def trt_layer_names(model) -> Dict[str, str]:  # noqa: ANN001
    """ONNX node name -> the TensorRT layer name onnx-tensorrt gives it (8.5 and 10.x ImporterContext::
    registerLayer): the node's name, `node_of_<first output>` when it has none, with `_<n>` appended
    to a name already taken."""
    taken: Set[str] = set()
    counter = [0]
    names = {}
    for node in model.graph.node:
        base = node.name or "node_of_" + node.output[0]
        name = base
        while name in taken:
            name = "{}_{}".format(base, counter[0])
            counter[0] += 1
        taken.add(name)
        names[node.name or base] = name
    return names


def layer_precisions(fp32_model, keep: Iterable[str]) -> Dict[str, str]:  # noqa: ANN001
    """TensorRT layer name -> "fp16" for each kept convolution and what TensorRT fuses into it, as the
    FP32 model (what DLA's implicit INT8 builds from) names them."""
    names = trt_layer_names(fp32_model)
    found: Dict[str, str] = {}
    for conv in sorted(keep):
        for node in [conv] + fused_followers(fp32_model, conv):
            found[names[node]] = "fp16"
    return found

