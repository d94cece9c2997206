"""A network's prunable layers as data: channel groups, layer kinds, and ONNX graphs built with onnx.helper.

Torch-free (Python 3.8): the host derives this description from an architecture's dense model
(`edgekit.host.arch.latency`), writes it into the latency table as JSON, and the device reads it back to
build and time the same per-layer graphs without the model.

- A *group* is a set of channels that pruning must cut together (one of Torch-Pruning's
  DependencyGraph groups, named after the module whose output channels stand for it); a fixed group
  (the classifier's outputs) keeps its dense width.
- A *layer kind* is one convolution or linear layer at a fixed geometry (kernel, stride, padding,
  depthwise or not, input side), with what runs fused behind it (its activation, a residual Add and an
  activation after it); a squeeze-excite block (global pool, two 1x1 convolutions, the gate, the Mul)
  is one kind of its own. Identical layers share a kind, so a table measured per kind covers the
  whole network.
- `ops`, when present, is the whole network in execution order, so whole networks of any widths can
  be built for calibration. ResNet-50's built-in description (layers.py) has none: resnet_onnx builds it.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import EdgekitError
from ...lazy import lazy_import

FORMAT = "edgekit.latency-layers/1"
IMAGE_CHANNELS = 3
ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid", "silu", "sigmoid")

Groups = Dict[str, int]


def conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


class LayerKind(object):
    """One layer geometry. `op` is conv, se (squeeze-excite: `cout` is the squeezed width), linear, or
    stem (ResNet-50's 7x7/2 conv, ReLU and 3x3/2 max pool). `cin`/`cout` are the dense widths its grid
    spans; a fixed side (the image, the classes) is timed at that width only."""

    FIELDS = ("op", "kernel", "stride", "pad", "dilation", "in_hw", "cin", "cout", "cin_fixed", "cout_fixed",
              "depthwise", "act", "residual", "post_act", "gate")

    def __init__(self, name: str, op: str, kernel: int, stride: int, in_hw: int, cin_group: Optional[str],
                 cout_group: str, **geometry: Any) -> None:
        self.name, self.op, self.kernel, self.stride, self.in_hw = name, op, kernel, stride, in_hw
        self.cin_group, self.cout_group = cin_group, cout_group
        self.pad = int(geometry.get("pad", kernel // 2))
        self.dilation = int(geometry.get("dilation", 1))
        self.cin, self.cout = int(geometry.get("cin", 0)), int(geometry.get("cout", 0))
        self.cin_fixed = bool(geometry.get("cin_fixed", cin_group is None))
        self.cout_fixed = bool(geometry.get("cout_fixed", False))
        self.depthwise = bool(geometry.get("depthwise", False))
        self.act = geometry.get("act")
        self.residual = bool(geometry.get("residual", False))
        self.post_act = geometry.get("post_act")
        self.gate = geometry.get("gate")

    @property
    def out_hw(self) -> int:
        if self.op == "stem":  # 7x7/2 conv then 3x3/2 max pool
            return conv_out(conv_out(self.in_hw, 7, 2, 3), 3, 2, 1)
        if self.op in ("se", "linear"):
            return self.in_hw
        return conv_out(self.in_hw, self.kernel, self.stride, self.pad, self.dilation)

    def weights(self, cin: int, cout: int) -> int:
        """Weights of one layer at (cin, cout): what a whole network streams from memory."""
        if self.op == "se":
            return 2 * cin * cout
        if self.depthwise:
            return cout * self.kernel * self.kernel
        return cin * cout * self.kernel * self.kernel

    def to_dict(self) -> Dict[str, Any]:
        out = {f: getattr(self, f) for f in self.FIELDS}
        out.update(cin_group=self.cin_group, cout_group=self.cout_group)
        return out

    @classmethod
    def from_dict(cls, name: str, d: Dict[str, Any]) -> "LayerKind":
        geometry = {f: d[f] for f in cls.FIELDS if f in d and f not in ("op", "kernel", "stride", "in_hw")}
        return cls(name, d["op"], int(d["kernel"]), int(d["stride"]), int(d["in_hw"]), d.get("cin_group"),
                   d["cout_group"], **geometry)

    def __repr__(self) -> str:
        return "LayerKind({}, {} {}x{}/{} at {})".format(self.name, self.op, self.kernel, self.kernel, self.stride,
                                                       self.in_hw)


class Net(object):
    """The description of one architecture at one input size (see the module docstring).

    groups: {name: {"dense": width, "prunable": bool, "root": module whose output channels stand for it}}
    layers: [(module name, kind name, input group or None for the image, output group)]"""

    def __init__(self, arch: str, image_size: int, groups: Dict[str, Dict[str, Any]], kinds: Dict[str, LayerKind],
                 layers: List[Tuple[str, str, Optional[str], str]], ops: Optional[List[Dict[str, Any]]] = None) -> None:
        self.arch, self.image_size, self.groups, self.kinds = arch, int(image_size), groups, kinds
        self.layers, self.ops = layers, ops

    def dense_groups(self) -> Groups:
        """Dense width of every prunable group (what pruning may change)."""
        return {g: int(v["dense"]) for g, v in self.groups.items() if v["prunable"]}

    def width(self, groups: Groups, group: Optional[str]) -> int:
        if group is None:
            return IMAGE_CHANNELS
        return int(groups[group]) if group in groups else int(self.groups[group]["dense"])

    def kind_layers(self) -> List[Tuple[LayerKind, Optional[str], str]]:
        return [(self.kinds[kind], gin, gout) for _, kind, gin, gout in self.layers]

    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "arch": self.arch, "image_size": self.image_size, "groups": self.groups,
                "kinds": {n: k.to_dict() for n, k in self.kinds.items()},
                "layers": [list(entry) for entry in self.layers], "ops": self.ops}

    @classmethod
    def from_dict(cls, d: Any) -> "Net":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise EdgekitError("not a layer description (format {!r}, expected {})".format(found, FORMAT))
        try:
            kinds = {n: LayerKind.from_dict(n, k) for n, k in d["kinds"].items()}
            layers = [(str(a), str(b), c, str(e)) for a, b, c, e in d["layers"]]
            net = cls(d["arch"], int(d["image_size"]), d["groups"], kinds, layers, d.get("ops"))
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgekitError("malformed layer description: {}: {}".format(type(exc).__name__, exc)) from None
        unknown = [k for _, k, _, _ in layers if k not in kinds]
        if unknown:
            raise EdgekitError("malformed layer description: layer kind {!r} is not described".format(unknown[0]))
        return net


# --------------------------------------------------------------------------- ONNX graphs

def _weights(rng: Any, shape: Sequence[int]) -> np.ndarray:
    """He-initialised: activations keep their scale through any depth. A fixed small scale shrank them
    through a MobileNet's depthwise layers (fan-in 9) towards denormals, which a CPU runs slowly."""
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


class Graph(object):
    def __init__(self, seed: int = 0) -> None:
        self.onnx = lazy_import("onnx")
        self.nodes: List[Any] = []
        self.inits: List[Any] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return "{}_{}".format(prefix, self.count)

    def const(self, array: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int, pad: Optional[int] = None,
             groups: int = 1, dilation: int = 1) -> str:
        # BatchNorm folds into the conv's weights and bias at export, so conv + bias is what runs.
        w = self.const(_weights(self.rng, (cout, cin // groups, kernel, kernel)), "w")
        bias = self.const(np.zeros(cout, np.float32), "b")
        pad = kernel // 2 if pad is None else pad
        attrs: Dict[str, Any] = {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4}
        if groups > 1:
            attrs["group"] = groups
        if dilation > 1:
            attrs["dilations"] = [dilation, dilation]
        return self.op("Conv", [x, w, bias], **attrs)

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = self.const(_weights(self.rng, (cout, cin)), "fc_w")
        bias = self.const(np.zeros(cout, np.float32), "fc_b")
        return self.op("Gemm", [x, w, bias], transB=1)

    def act(self, x: str, act: Optional[str]) -> str:
        """An activation as torch exports it (ReLU6 is a Clip, SiLU a Sigmoid and a Mul)."""
        if act is None:
            return x
        if act == "relu":
            return self.op("Relu", [x])
        if act == "relu6":
            return self.op("Clip", [x, self.const(np.array(0.0, np.float32)), self.const(np.array(6.0, np.float32))])
        if act == "hardswish":
            return self.op("HardSwish", [x])
        if act == "hardsigmoid":
            return self.op("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)
        if act == "sigmoid":
            return self.op("Sigmoid", [x])
        if act == "silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        raise EdgekitError("unknown activation {!r} in a layer description (known: {})".format(
            act, ", ".join(ACTIVATIONS)))

    def se(self, x: str, channels: int, squeezed: int, act: Optional[str], gate: Optional[str]) -> str:
        s = self.op("GlobalAveragePool", [x])
        s = self.act(self.conv(s, channels, squeezed, 1, 1, 0), act)
        s = self.act(self.conv(s, squeezed, channels, 1, 1, 0), gate)
        return self.op("Mul", [x, s])

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
    """One layer at widths (cin, cout) as an ONNX ModelProto with a static batch (a residual kind also
    takes the tensor it adds as a second input)."""
    g = Graph()
    hw = kind.in_hw
    if kind.op == "linear":
        y = g.act(g.gemm("input", cin, cout), kind.act)
        return g.model([("input", [batch, cin])], y, [batch, cout])
    inputs = [("input", [batch, cin, hw, hw])]
    if kind.op == "stem":
        y = g.op("Relu", [g.conv("input", IMAGE_CHANNELS, cout, 7, 2)])
        y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    elif kind.op == "se":
        y = g.se("input", cin, cout, kind.act, kind.gate)
        cout = cin
    else:
        y = g.act(g.conv("input", cin, cout, kind.kernel, kind.stride, kind.pad, cin if kind.depthwise else 1,
                         kind.dilation), kind.act)
        if kind.residual:
            inputs.append(("residual", [batch, cout, kind.out_hw, kind.out_hw]))
            y = g.act(g.op("Add", [y, "residual"]), kind.post_act)
    return g.model(inputs, y, [batch, cout, kind.out_hw, kind.out_hw])


def ops_onnx(net: Net, groups: Groups, batch: int) -> Any:
    """A whole network from its `ops` at these widths (random weights)."""
    g = Graph()
    assert net.ops is not None
    names: List[str] = []
    channels: List[int] = []
    shape: List[Any] = []
    for op in net.ops:
        kind = op["op"]
        src = op.get("in")
        x = names[src] if isinstance(src, int) else None
        c = channels[src] if isinstance(src, int) else IMAGE_CHANNELS
        if kind == "input":
            y, c = "input", IMAGE_CHANNELS
        elif kind == "conv":
            cout = c if op["depthwise"] else net.width(groups, op["group"])
            y = g.conv(x, c, cout, op["kernel"], op["stride"], op["pad"], c if op["depthwise"] else 1,
                       op.get("dilation", 1))
            c = cout
        elif kind == "linear":
            cout = net.width(groups, op["group"])
            y, c = g.gemm(x, c, cout), cout
        elif kind == "act":
            y = g.act(x, op["act"])
        elif kind in ("add", "mul"):
            a, b = op["in"]
            y, c = g.op(kind.capitalize(), [names[a], names[b]]), max(channels[a], channels[b])
        elif kind == "gap":
            y = g.op("GlobalAveragePool", [x])
        elif kind == "flatten":
            y = g.op("Flatten", [x])
        elif kind == "maxpool":
            y = g.op("MaxPool", [x], kernel_shape=[op["kernel"]] * 2, strides=[op["stride"]] * 2, pads=[op["pad"]] * 4)
        else:
            raise EdgekitError("unknown op {!r} in a layer description".format(kind))
        names.append(y)
        channels.append(c)
        shape = [batch, c]
    size = net.image_size
    return g.model([("input", [batch, IMAGE_CHANNELS, size, size])], names[-1], shape)
