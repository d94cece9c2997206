"""ResNet-50's built-in layer description: its channel groups and its 25 layer kinds.

Torch-free (Python 3.8), so a device can build ResNet-50's table with no description file from the
host (any other architecture's description comes from the host, `edgekit.host.arch.latency`, inside
a table or a layers file). The format and the ONNX builders are `net.py`'s.

The groups are Torch-Pruning's DependencyGraph groups for a torchvision ResNet-50: the stem, each
block's conv1 and conv2 outputs, and each stage's output (every conv3 and the downsample of a stage
are tied by the residual additions). The 53 convolutions fall into 25 kinds (conv + folded BN, +
ReLU, + the residual Add for conv3).
"""

from typing import Any, Dict, List, Optional, Tuple

from .net import Graph, LayerKind, Net, conv_out, layer_onnx, ops_onnx

__all__ = ["LayerKind", "Net", "layer_onnx", "resnet50_net", "layer_kinds", "layers", "dense_groups",
           "groups_of", "spec_of", "resnet_onnx", "network_onnx"]

BLOCKS = (3, 4, 6, 3)
DENSE_MID = (64, 128, 256, 512)
DENSE_OUT = (256, 512, 1024, 2048)
DENSE_STEM = 64
# torchvision v1.5: the stride sits on conv2 and on the downsample of each stage's first block.
STRIDES = (1, 2, 2, 2)

Groups = Dict[str, int]


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
    kinds = [LayerKind("stem", "stem", 7, 2, image_size, None, "stem", pad=3, cin=3, cout=DENSE_STEM, act="relu")]
    hw = kinds[0].out_hw
    prev, prev_w = "stem", DENSE_STEM
    for s, (stride, mid, out_w) in enumerate(zip(STRIDES, DENSE_MID, DENSE_OUT), start=1):
        out = stage_group(s)
        out_hw = conv_out(hw, 3, stride, 1)

        def conv(name: str, kernel: int, st: int, at: int, gin: str, gout: str, cin: int, cout: int,
                 stage: int = s, **fused: Any) -> LayerKind:
            return LayerKind(name.format(stage), "conv", kernel, st, at, gin, gout, cin=cin, cout=cout, **fused)

        # The group names in a kind are the first block's; `layers` maps every block onto its kind.
        kinds.append(conv("layer{}.first.conv1", 1, 1, hw, prev, "mid1", prev_w, mid, act="relu"))
        kinds.append(conv("layer{}.first.conv2", 3, stride, hw, "mid1", "mid2", mid, mid, act="relu"))
        kinds.append(conv("layer{}.conv3", 1, 1, out_hw, "mid2", out, mid, out_w, residual=True, post_act="relu"))
        kinds.append(conv("layer{}.downsample", 1, stride, hw, prev, out, prev_w, out_w))
        kinds.append(conv("layer{}.rest.conv1", 1, 1, out_hw, out, "mid1", out_w, mid, act="relu"))
        kinds.append(conv("layer{}.rest.conv2", 3, 1, out_hw, "mid1", "mid2", mid, mid, act="relu"))
        hw, prev, prev_w = out_hw, out, out_w
    return kinds


def resnet50_net(image_size: int) -> Net:
    """ResNet-50's description at `image_size` (no `ops`: resnet_onnx builds its whole networks)."""
    roots = {"stem": "conv1"}
    for s, n in enumerate(BLOCKS, start=1):
        roots[stage_group(s)] = "layer{}.0.conv3".format(s)
        for b in range(n):
            for c in (1, 2):
                roots[block_group(s, b, c)] = block_group(s, b, c)
    groups = {g: {"dense": w, "prunable": True, "root": roots[g]} for g, w in dense_groups().items()}
    kinds = {k.name: k for k in layer_kinds(image_size)}
    return Net("resnet50", image_size, groups, kinds, _walk(kinds))


def _walk(kinds: Dict[str, LayerKind]) -> List[Tuple[str, str, Optional[str], str]]:
    """Every conv of the network: (module name, kind name, input group or None for the image, output group)."""
    found: List[Tuple[str, str, Optional[str], str]] = [("conv1", "stem", None, "stem")]
    prev = "stem"
    for s, n in enumerate(BLOCKS, start=1):
        out = stage_group(s)
        for b in range(n):
            where = "first" if b == 0 else "rest"
            g1, g2 = block_group(s, b, 1), block_group(s, b, 2)
            module = "layer{}.{}.".format(s, b)
            found.append((module + "conv1", "layer{}.{}.conv1".format(s, where), prev if b == 0 else out, g1))
            found.append((module + "conv2", "layer{}.{}.conv2".format(s, where), g1, g2))
            found.append((module + "conv3", "layer{}.conv3".format(s), g2, out))
            if b == 0:
                found.append((module + "downsample.0", "layer{}.downsample".format(s), prev, out))
        prev = out
    assert all(kind in kinds for _, kind, _, _ in found)
    return found


def layers(groups: Groups, image_size: int) -> List[Tuple[LayerKind, Optional[str], str]]:
    """Every conv of the network: (kind, input group or None for the image, output group)."""
    del groups  # the topology is fixed; callers pass groups for symmetry with predict()
    return resnet50_net(image_size).kind_layers()


def resnet_onnx(groups: Groups, image_size: int, batch: int, num_classes: int = 1000) -> Any:
    """A whole ResNet-50 of these widths (random weights), for end-to-end checks of the table."""
    g = Graph()
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
    logits = g.gemm(x, cin, num_classes)
    return g.model([("input", [batch, 3, image_size, image_size])], logits, [batch, num_classes])


def network_onnx(net: Net, groups: Groups, batch: int) -> Any:
    """The whole network `net` describes at these widths (random weights): what calibrates and validates
    its table. The built-in ResNet-50 description has no ops of its own: it is built here."""
    if net.ops is None:
        return resnet_onnx(dict(net.dense_groups(), **groups), net.image_size, batch)
    return ops_onnx(net, groups, batch)
