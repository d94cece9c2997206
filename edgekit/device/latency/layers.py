"""ResNet-50's prunable layers as data: channel groups, layer kinds, and ONNX graphs built with onnx.helper.

Torch-free (Python 3.8) so the device can build and time the same per-layer graphs the host does.

A *group* is a set of channels that pruning must cut together (Torch-Pruning's DependencyGraph
groups for a torchvision ResNet-50): the stem, each block's conv1 and conv2 outputs, and each
stage's output (every conv3 and the downsample of a stage are tied by the residual additions).
A *layer kind* is one conv (+ folded BN, + ReLU, + the residual Add for conv3) at a fixed geometry
whose input and output widths come from groups; the 53 convolutions of ResNet-50 fall into 25 kinds,
so a table measured per kind covers the whole network.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...lazy import lazy_import

BLOCKS = (3, 4, 6, 3)
DENSE_MID = (64, 128, 256, 512)
DENSE_OUT = (256, 512, 1024, 2048)
DENSE_STEM = 64
# torchvision v1.5: the stride sits on conv2 and on the downsample of each stage's first block.
STRIDES = (1, 2, 2, 2)

Groups = Dict[str, int]


class LayerKind(object):
    """One conv geometry: `op` is conv_relu, conv_add_relu (conv3 + residual), conv (downsample) or stem."""

    def __init__(self, name: str, op: str, kernel: int, stride: int, in_hw: int, cin_group: Optional[str],
                 cout_group: str) -> None:
        self.name, self.op, self.kernel, self.stride, self.in_hw = name, op, kernel, stride, in_hw
        self.cin_group, self.cout_group = cin_group, cout_group

    @property
    def out_hw(self) -> int:
        if self.op == "stem":  # 7x7/2 conv then 3x3/2 max pool
            return _conv_out(_conv_out(self.in_hw, 7, 2, 3), 3, 2, 1)
        return _conv_out(self.in_hw, self.kernel, self.stride, self.kernel // 2)

    def __repr__(self) -> str:
        return "LayerKind({}, {}x{}/{} at {})".format(self.name, self.kernel, self.kernel, self.stride, self.in_hw)


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def stage_group(s: int) -> str:
    return "layer{}.out".format(s)


def block_group(s: int, b: int, conv: int) -> str:
    return "layer{}.{}.conv{}".format(s, b, conv)


def groups_of(spec: Dict[str, Any]) -> Groups:
    """A width spec (edgekit.host.models) as {group: width}."""
    groups = {"stem": int(spec["stem"])}
    for s, stage in enumerate(spec["stages"], start=1):
        groups[stage_group(s)] = int(stage["out"])
        for b, (mid1, mid2) in enumerate(stage["blocks"]):
            groups[block_group(s, b, 1)] = int(mid1)
            groups[block_group(s, b, 2)] = int(mid2)
    return groups


def spec_of(groups: Groups) -> Dict[str, Any]:
    stages = []
    for s, n in enumerate(BLOCKS, start=1):
        stages.append({"out": groups[stage_group(s)],
                       "blocks": [[groups[block_group(s, b, 1)], groups[block_group(s, b, 2)]] for b in range(n)]})
    return {"arch": "resnet50", "stem": groups["stem"], "stages": stages}


def dense_groups() -> Groups:
    groups = {"stem": DENSE_STEM}
    for s, (n, mid, out) in enumerate(zip(BLOCKS, DENSE_MID, DENSE_OUT), start=1):
        groups[stage_group(s)] = out
        for b in range(n):
            groups[block_group(s, b, 1)] = mid
            groups[block_group(s, b, 2)] = mid
    return groups


def layer_kinds(image_size: int) -> List[LayerKind]:
    kinds = [LayerKind("stem", "stem", 7, 2, image_size, None, "stem")]
    hw = kinds[0].out_hw
    prev = "stem"
    for s, stride in enumerate(STRIDES, start=1):
        out = stage_group(s)
        # The group names in a kind are the first block's; `layers` maps every block onto its kind.
        kinds.append(LayerKind("layer{}.first.conv1".format(s), "conv_relu", 1, 1, hw, prev, "mid1"))
        kinds.append(LayerKind("layer{}.first.conv2".format(s), "conv_relu", 3, stride, hw, "mid1", "mid2"))
        out_hw = _conv_out(hw, 3, stride, 1)
        kinds.append(LayerKind("layer{}.conv3".format(s), "conv_add_relu", 1, 1, out_hw, "mid2", out))
        kinds.append(LayerKind("layer{}.downsample".format(s), "conv", 1, stride, hw, prev, out))
        kinds.append(LayerKind("layer{}.rest.conv1".format(s), "conv_relu", 1, 1, out_hw, out, "mid1"))
        kinds.append(LayerKind("layer{}.rest.conv2".format(s), "conv_relu", 3, 1, out_hw, "mid1", "mid2"))
        hw, prev = out_hw, out
    return kinds


def layers(groups: Groups, image_size: int) -> List[Tuple[LayerKind, Optional[str], str]]:
    """Every conv of the network: (kind, input group or None for the image, output group)."""
    by_name = {k.name: k for k in layer_kinds(image_size)}
    found: List[Tuple[LayerKind, Optional[str], str]] = [(by_name["stem"], None, "stem")]
    prev = "stem"
    for s, n in enumerate(BLOCKS, start=1):
        out = stage_group(s)
        for b in range(n):
            where = "first" if b == 0 else "rest"
            g1, g2 = block_group(s, b, 1), block_group(s, b, 2)
            found.append((by_name["layer{}.{}.conv1".format(s, where)], prev if b == 0 else out, g1))
            found.append((by_name["layer{}.{}.conv2".format(s, where)], g1, g2))
            found.append((by_name["layer{}.conv3".format(s)], g2, out))
            if b == 0:
                found.append((by_name["layer{}.downsample".format(s)], prev, out))
        prev = out
    del groups  # the topology is fixed; callers pass groups for symmetry with predict()
    return found


# --------------------------------------------------------------------------- ONNX graphs

def _weights(rng: Any, shape: Sequence[int]) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.05).astype(np.float32)


class _Graph(object):
    def __init__(self, seed: int = 0) -> None:
        self.onnx = lazy_import("onnx")
        self.nodes: List[Any] = []
        self.inits: List[Any] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return "{}_{}".format(prefix, self.count)

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int) -> str:
        helper, numpy_helper = self.onnx.helper, self.onnx.numpy_helper
        w, bias, y = self.name("w"), self.name("b"), self.name("conv")
        # BatchNorm folds into the conv's weights and bias at export, so conv + bias is what runs.
        self.inits.append(numpy_helper.from_array(_weights(self.rng, (cout, cin, kernel, kernel)), w))
        self.inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), bias))
        pad = kernel // 2
        self.nodes.append(helper.make_node("Conv", [x, w, bias], [y], kernel_shape=[kernel, kernel],
                                           strides=[stride, stride], pads=[pad] * 4))
        return y

    def op(self, op_type: str, inputs: List[str], **attrs: Any) -> str:
        y = self.name(op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [y], **attrs))
        return y

    def model(self, inputs: List[Tuple[str, List[int]]], output: str, out_shape: List[Any]) -> Any:
        helper, TensorProto = self.onnx.helper, self.onnx.TensorProto
        graph = helper.make_graph(
            self.nodes, "edgekit_latency",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)], initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # onnxruntime 1.x and TensorRT 8.5 both read IR 8
        return model


def layer_onnx(kind: LayerKind, cin: int, cout: int, batch: int) -> Any:
    """One layer at widths (cin, cout) as an ONNX ModelProto with a static batch."""
    g = _Graph()
    hw = kind.in_hw
    inputs = [("input", [batch, cin, hw, hw])]
    if kind.op == "stem":
        y = g.op("Relu", [g.conv("input", 3, cout, 7, 2)])
        y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    else:
        y = g.conv("input", cin, cout, kind.kernel, kind.stride)
        if kind.op == "conv_add_relu":
            inputs.append(("residual", [batch, cout, kind.out_hw, kind.out_hw]))
            y = g.op("Relu", [g.op("Add", [y, "residual"])])
        elif kind.op == "conv_relu":
            y = g.op("Relu", [y])
    return g.model(inputs, y, [batch, cout, kind.out_hw, kind.out_hw])


def resnet_onnx(groups: Groups, image_size: int, batch: int, num_classes: int = 1000) -> Any:
    """A whole ResNet-50 of these widths (random weights), for end-to-end checks of the table."""
    g = _Graph()
    x = g.op("Relu", [g.conv("input", 3, groups["stem"], 7, 2)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = groups["stem"]
    for s, (n, stride) in enumerate(zip(BLOCKS, STRIDES), start=1):
        out = groups[stage_group(s)]
        for b in range(n):
            g1, g2 = groups[block_group(s, b, 1)], groups[block_group(s, b, 2)]
            st = stride if b == 0 else 1
            y = g.op("Relu", [g.conv(x, cin, g1, 1, 1)])
            y = g.op("Relu", [g.conv(y, g1, g2, 3, st)])
            y = g.conv(y, g2, out, 1, 1)
            shortcut = g.conv(x, cin, out, 1, st) if b == 0 else x
            x = g.op("Relu", [g.op("Add", [y, shortcut])])
            cin = out
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    helper, numpy_helper = g.onnx.helper, g.onnx.numpy_helper
    w, bias = g.name("fc_w"), g.name("fc_b")
    g.inits.append(numpy_helper.from_array(_weights(g.rng, (num_classes, cin)), w))
    g.inits.append(numpy_helper.from_array(np.zeros(num_classes, np.float32), bias))
    logits = g.name("logits")
    g.nodes.append(helper.make_node("Gemm", [x, w, bias], [logits], transB=1))
    return g.model([("input", [batch, 3, image_size, image_size])], logits, [batch, num_classes])
