"""TensorRT-compatibility lint of an ONNX model, before anyone waits for an engine build.

Rules (TensorRT 8.5, the last for AGX Xavier; from onnx-tensorrt's operator matrix for 8.5):
- opset at most 17;
- every op in the parser's supported list (`UNSUPPORTED` ones are named with the node). The 8.5-GA
  docs/operators.md marks HardSwish, Mod and OneHot "N", but that release's builtin_op_importers.cpp
  imports all three (HardSwish since 8.4 GA, as HardSigmoid times its input): the list follows the parser;
- no INT64 initializer whose values do not fit INT32 (TensorRT casts INT64 down and clamps) and
  no DOUBLE initializer;
- Q/DQ: int8 only (no uint8), zero points 0, positive scales, weights FP32 behind a Q->DQ pair
  (an INT8 weight initializer read by DequantizeLinear alone is onnxruntime's layout, which the 8.x
  developer guide does not ask for), weight Q/DQ per-channel on axis 0 of a convolution's weights,
  a convolution quantized on both its inputs (INT8) or on neither (a layer kept in higher precision),
  and every Add that an INT8 convolution feeds reads its other (residual) input through a
  DequantizeLinear, or TensorRT cannot fuse it and runs it in FP16 (allowed when that other input is a
  kept float convolution's: the Add then runs unfused, the cost of keeping that layer).

Needs only the `onnx` package (no torch): the device can lint before it builds. Python 3.8 clean.
"""

from typing import Dict, List, Optional

import numpy as np

from .errors import EdgekitError
from .lazy import lazy_import

MAX_OPSET = 17

SUPPORTED_OPS = frozenset((
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu",
    "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "GRU", "Gather", "GatherElements", "GatherND",
    "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "HardSigmoid", "HardSwish", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsNaN", "LRN", "LSTM",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LpNormalization", "LpPool", "MatMul", "Max",
    "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero",
    "Not", "OneHot", "Or", "PRelu", "Pad", "ParametricSoftplus", "Pow", "QuantizeLinear", "RNN", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
    "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RoiAlign", "Round", "ScaledTanh", "Scan",
    "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size",
    "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan",
    "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
))

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


class Violation(object):
    def __init__(self, node: str, rule: str, message: str) -> None:
        self.node = node
        self.rule = rule
        self.message = message

    def __str__(self) -> str:
        return "node {}: {} [{}]".format(self.node, self.message, self.rule)

    def to_dict(self) -> Dict[str, str]:
        return {"node": self.node, "rule": self.rule, "message": self.message}


def lint_model(model) -> List[Violation]:  # noqa: ANN001, C901 - one pass per rule reads best
    """All TensorRT 8.5 violations of an onnx.ModelProto (empty list: clean)."""
    onnx = lazy_import("onnx")
    numpy_helper = onnx.numpy_helper
    violations: List[Violation] = []
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_OPSET:
        violations.append(Violation("(model)", "opset", "opset {} is newer than TensorRT 8.5 parses ({}); "
                                    "re-export with opset_version={}".format(opset, MAX_OPSET, MAX_OPSET)))
    init = {i.name: i for i in graph.initializer}
    consumers: Dict[str, List[object]] = {}
    producer: Dict[str, object] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node

    def node_name(node) -> str:  # noqa: ANN001
        return node.name or "{}({})".format(node.op_type, node.output[0] if node.output else "?")

    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            violations.append(Violation(node_name(node), "unsupported-op", "{}{} is not supported by TensorRT "
                                        "8.5's ONNX parser".format(node.domain + "." if node.domain else "",
                                                                    node.op_type)))
    for tensor in graph.initializer:
        users = ", ".join(node_name(n) for n in consumers.get(tensor.name, [])[:2]) or tensor.name
        if tensor.data_type == onnx.TensorProto.INT64:
            values = numpy_helper.to_array(tensor)
            if values.size and (values.min() < INT32_MIN or values.max() > INT32_MAX):
                violations.append(Violation(users, "int64-weights", "INT64 initializer {} holds values outside "
                                            "INT32, which TensorRT clamps".format(tensor.name)))
        elif tensor.data_type == onnx.TensorProto.DOUBLE:
            violations.append(Violation(users, "double-weights", "DOUBLE initializer {}: TensorRT casts it to "
                                        "FP32; export in float32".format(tensor.name)))

    def constant(name: str) -> Optional[np.ndarray]:
        return numpy_helper.to_array(init[name]) if name in init else None

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = constant(node.input[1]) if len(node.input) > 1 else None
        zero = constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None and len(node.input) > 2 and node.input[2]:
            violations.append(Violation(node_name(node), "qdq-constant", "zero point must be a constant"))
        if zero is not None:
            if zero.dtype != np.int8:
                violations.append(Violation(node_name(node), "qdq-int8", "{} zero point: TensorRT 8.5 takes int8 "
                                            "Q/DQ only (use symmetric int8 activations, not the CPU model)".format(
                                                zero.dtype.name)))
            elif np.any(zero != 0):
                violations.append(Violation(node_name(node), "qdq-zero-point", "zero point must be 0 (symmetric)"))
        if scale is None:
            violations.append(Violation(node_name(node), "qdq-constant", "scale must be a constant"))
        elif np.any(scale <= 0):
            violations.append(Violation(node_name(node), "qdq-scale", "scales must be positive"))
        if node.op_type == "DequantizeLinear" and node.input[0] in init and init[node.input[0]].data_type in (
                onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            violations.append(Violation(node_name(node), "qdq-weight-pair", "weight {} is stored quantized and read by "
                                        "DequantizeLinear alone: TensorRT 8.5 takes FP32 weights behind a "
                                        "QuantizeLinear->DequantizeLinear pair (onnxruntime's AddQDQPairToWeight)"
                                        .format(node.input[0])))
        source = producer.get(node.input[0])
        on_weight = node.input[0] in init or (
            node.op_type == "DequantizeLinear" and getattr(source, "op_type", None) == "QuantizeLinear"
            and source.input[0] in init)  # type: ignore[union-attr]
        if on_weight and scale is not None and scale.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if axis != 0:
                violations.append(Violation(node_name(node), "qdq-axis", "per-channel weight scales must be on "
                                            "axis 0 (output channels), got axis {}".format(axis)))

    if any(n.op_type == "QuantizeLinear" for n in graph.node):
        violations += _conv_qdq_violations(graph, producer, init, node_name)
    return violations


def _conv_qdq_violations(graph, producer: Dict[str, object], init: Dict[str, object],  # noqa: ANN001
                         node_name) -> List[Violation]:  # noqa: ANN001
    """A convolution is INT8 (activation and weight through DequantizeLinear) or float (neither: a layer
    kept in higher precision); an Add fed by an INT8 convolution reads its residual through Q/DQ, unless
    its other input is a kept convolution's."""
    def through_dq(name: str) -> bool:
        return getattr(producer.get(name), "op_type", None) == "DequantizeLinear"

    found = []
    int8_convs, float_convs = set(), set()
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        quantized = [through_dq(node.input[0]), through_dq(node.input[1])]
        if all(quantized):
            int8_convs.add(node.output[0])
        elif not any(quantized):
            float_convs.add(node.output[0])
        else:
            found.append(Violation(node_name(node), "qdq-partial", "only its {} goes through Q/DQ: TensorRT runs "
                                   "it in float after a needless quantization; quantize both or neither (a kept "
                                   "layer)".format("activation" if quantized[0] else "weight")))
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or set(node.input) & set(init):
            continue
        # beside a kept (float) convolution the Add stays unfused in FP16: the price of keeping that layer
        if set(node.input) & int8_convs and not set(node.input) & float_convs and not any(
                through_dq(name) for name in node.input):
            found.append(Violation(node_name(node), "qdq-residual", "residual Add has no Q/DQ on its residual "
                                   "input: TensorRT cannot fuse it into the INT8 convolution and runs it in FP16"))
    return found
def by_rule(violations: List[Violation]) -> Dict[str, List[Violation]]:
    """Violations grouped by rule, the most frequent rule first (a CPU INT8 model breaks one rule per node)."""
    groups: Dict[str, List[Violation]] = {}
    for violation in violations:
        groups.setdefault(violation.rule, []).append(violation)
    return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))


def lint(path: str) -> List[Violation]:
    onnx = lazy_import("onnx")
    try:
        model = onnx.load(path)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise EdgekitError("{} is not a readable ONNX file ({})".format(path, str(exc).splitlines()[0][:160])) from None
    return lint_model(model)


def check_tensorrt_compatible(path: str) -> None:
    """Raise EdgekitError naming the first violating node (and how many more)."""
    found = lint(path)
    if found:
        more = " (and {} more)".format(len(found) - 1) if len(found) > 1 else ""
        raise EdgekitError("{} is not TensorRT 8.5 compatible: {}{}".format(path, found[0], more))
