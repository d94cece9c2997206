"""An architecture's layers as the torch-free description its latency table is measured from.

The model is traced (torch.fx) and run once at the latency input size, so every convolution and
linear layer is seen with its own kernel, stride, padding, groups and input side, in execution
order, with what follows it. Torch-Pruning's DependencyGraph says which channel group each layer's
output belongs to (the same groups the pruning cuts). Then:

- a convolution takes the activation that follows it, and a residual Add (and the activation after
  it) when it is the last input to reach the Add, into its layer kind;
- global pool -> 1x1 conv -> activation -> 1x1 conv -> gate -> Mul is one squeeze-excite kind, whose
  widths are the channels it scales and its squeezed width;
- identical layers share a kind (the first one's module name names it).

BatchNorm, dropout and stochastic depth vanish in the exported graph (folded, or identity at
inference), and so here. An op this does not know fails with one line naming it: such an
architecture keeps `latency_target = False`.
"""

import operator
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...device.latency.net import IMAGE_CHANNELS, LayerKind, Net

_ACTS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
         nn.SiLU: "silu", nn.Sigmoid: "sigmoid"}
_ACT_FUNCTIONS = {F.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
                  F.silu: "silu", torch.sigmoid: "sigmoid", torch.relu: "relu"}
_IDENTITY = (nn.BatchNorm2d, nn.Dropout, nn.Identity)


def describe_layers(arch: Any, model: nn.Module, image_size: int) -> Net:
    """The description of `model` (dense, as the teacher is) at `image_size`."""
    model = model.eval()
    traced = torch.fx.symbolic_trace(model)
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(traced).propagate(torch.zeros(1, IMAGE_CHANNELS, image_size, image_size))
    out_group = _out_groups(arch, model)
    ops = _ops(traced, arch)
    groups = _groups(ops, out_group)
    kinds, layers = _kinds(ops, groups)
    return Net(arch.name, image_size, groups, kinds, layers, ops)


def _out_groups(arch: Any, model: nn.Module) -> Dict[str, str]:
    """Module name -> the name of the Torch-Pruning group its output channels belong to."""
    import torch_pruning as tp

    size = max(arch.min_image_size, arch.downsampling)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, IMAGE_CHANNELS, size, size))
    names = {m: n for n, m in model.named_modules()}
    found: Dict[str, str] = {}
    for group in graph.get_all_groups(ignored_layers=arch.ignored_layers(model),
                                      root_module_types=[nn.Conv2d, nn.Linear]):
        members = [names[dep.target.module] for dep, _ in group
                   if dep.target.module in names and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
                   and dep.handler.__name__ == "prune_out_channels"]
        for name in members:
            found.setdefault(name, members[0])
    return found


def _unsupported(what: str) -> ValueError:
    return ValueError("latency tables cannot describe {}: the layer kinds know convolutions (plain or "
                      "depthwise), linear layers, squeeze-excite, pooling, Add and the usual activations".format(what))


def _ops(traced: Any, arch: Any) -> List[Dict[str, Any]]:
    """The traced graph as ops in execution order; each op's "in" is the index of the op it reads."""
    ops: List[Dict[str, Any]] = []
    index: Dict[Any, int] = {}
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            ops.append({"op": "input", "hw": int(node.meta["tensor_meta"].shape[-1])})
            index[node] = len(ops) - 1
            continue
        if node.op in ("output", "get_attr"):
            continue
        tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
        src = index[tensors[0]] if tensors else None
        op = _op(traced, node, [index[t] for t in tensors])
        if op is None:  # identity at inference: the node is its input
            index[node] = src
            continue
        op.setdefault("in", src)
        if src is not None and node.op == "call_module":
            shape = tensors[0].meta["tensor_meta"].shape
            op["hw"] = int(shape[-1]) if len(shape) > 2 else 1
        ops.append(op)
        index[node] = len(ops) - 1
    return ops


def _op(traced: Any, node: Any, inputs: List[int]) -> Optional[Dict[str, Any]]:
    if node.op == "call_module":
        return _module_op(node.target, traced.get_submodule(node.target))
    target = node.target
    if target in (operator.add, torch.add, operator.mul, torch.mul) and len(inputs) == 2:
        return {"op": "add" if target in (operator.add, torch.add) else "mul", "in": inputs}
    if target in _ACT_FUNCTIONS:
        return {"op": "act", "act": _ACT_FUNCTIONS[target]}
    if target in (torch.flatten, "flatten"):
        return {"op": "flatten"}
    if target is F.adaptive_avg_pool2d and tuple(_pair(node.args[1])) == (1, 1):
        return {"op": "gap"}
    if getattr(target, "__name__", "") == "stochastic_depth":
        return None
    raise _unsupported("{} {}".format(node.op, getattr(target, "__name__", target)))


def _pair(value: Any) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore[return-value]


def _module_op(name: str, module: nn.Module) -> Optional[Dict[str, Any]]:
    if isinstance(module, _IDENTITY) or type(module).__name__ == "StochasticDepth":
        return None
    if type(module) in _ACTS:
        return {"op": "act", "act": _ACTS[type(module)]}
    if isinstance(module, nn.Conv2d):
        k, s, p, d = (_pair(module.kernel_size), _pair(module.stride), _pair(module.padding), _pair(module.dilation))
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        if len({k[0], k[1]}) > 1 or len(set(s)) > 1 or len(set(p)) > 1 or len(set(d)) > 1 or \
                (module.groups > 1 and not depthwise):
            raise _unsupported("{} ({}: a non-square or grouped convolution)".format(name, module))
        return {"op": "conv", "name": name, "kernel": k[0], "stride": s[0], "pad": p[0], "dilation": d[0],
                "depthwise": depthwise, "out": module.out_channels}
    if isinstance(module, nn.Linear):
        return {"op": "linear", "name": name, "out": module.out_features}
    if isinstance(module, nn.AdaptiveAvgPool2d) and _pair(module.output_size) == (1, 1):
        return {"op": "gap"}
    if isinstance(module, nn.MaxPool2d):
        k, s, p = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
        return {"op": "maxpool", "kernel": k[0], "stride": s[0], "pad": p[0]}
    if isinstance(module, nn.Flatten):
        return {"op": "flatten"}
    raise _unsupported("{} ({})".format(name, type(module).__name__))


def _groups(ops: List[Dict[str, Any]], out_group: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """Give every conv and linear op its output group; a layer outside every group (the classifier)
    is a fixed group of its own. Each group's root is its first non-depthwise layer."""
    groups: Dict[str, Dict[str, Any]] = {}
    for op in ops:
        if op["op"] not in ("conv", "linear"):
            continue
        name = op["name"]
        group = out_group.get(name, name)
        op["group"] = group
        entry = groups.setdefault(group, {"dense": op["out"], "prunable": name in out_group, "root": None})
        if entry["root"] is None and not op.get("depthwise"):
            entry["root"] = name
    for group, entry in groups.items():
        entry["root"] = entry["root"] or group
    return groups


def _tensor_groups(ops: List[Dict[str, Any]]) -> List[Optional[str]]:
    """The channel group of each op's output (None: the image's 3 channels)."""
    found: List[Optional[str]] = []
    for op in ops:
        if op["op"] in ("conv", "linear"):
            found.append(op["group"])
        elif op["op"] == "input":
            found.append(None)
        else:
            src = op["in"][0] if isinstance(op["in"], list) else op["in"]
            found.append(found[src])
    return found


def _consumers(ops: List[Dict[str, Any]]) -> List[List[int]]:
    users: List[List[int]] = [[] for _ in ops]
    for i, op in enumerate(ops):
        for src in op["in"] if isinstance(op.get("in"), list) else [op.get("in")]:
            if src is not None:
                users[src].append(i)
    return users


class _Walk(object):
    """Reads the fused ops behind one op: its single consumer, when that consumer is of a given type."""

    def __init__(self, ops: List[Dict[str, Any]]) -> None:
        self.ops, self.users = ops, _consumers(ops)

    def next(self, i: int, op: str) -> Optional[int]:
        users = self.users[i]
        return users[0] if len(users) == 1 and self.ops[users[0]]["op"] == op else None

    def act(self, i: int) -> Tuple[int, Optional[str]]:
        j = self.next(i, "act")
        return (i, None) if j is None else (j, self.ops[j]["act"])

    def squeeze_excite(self, gap: int) -> Optional[Tuple[int, int, Optional[str], Optional[str]]]:
        """(fc1, fc2, activation, gate) when `gap` starts a squeeze-excite that scales its own input."""
        fc1 = self.next(gap, "conv")
        if fc1 is None or self.ops[fc1]["kernel"] != 1:
            return None
        end1, act = self.act(fc1)
        fc2 = self.next(end1, "conv")
        if fc2 is None:
            return None
        end2, gate = self.act(fc2)
        mul = self.next(end2, "mul")
        if mul is None or sorted(self.ops[mul]["in"]) != sorted([self.ops[gap]["in"], end2]):
            return None
        return fc1, fc2, act, gate


def _kinds(ops: List[Dict[str, Any]], groups: Dict[str, Dict[str, Any]]) -> Tuple[Dict[str, LayerKind], list]:
    tgroup = _tensor_groups(ops)
    walk = _Walk(ops)
    claimed = set()
    kinds: Dict[str, LayerKind] = {}
    seen: Dict[tuple, str] = {}
    layers = []

    def dense(group: Optional[str]) -> int:
        return IMAGE_CHANNELS if group is None else int(groups[group]["dense"])

    def fixed(group: Optional[str]) -> bool:
        return group is None or not groups[group]["prunable"]

    def add(name: str, op: str, kernel: int, stride: int, hw: int, gin: Optional[str], gout: str,
            **fields: Any) -> None:
        kind = LayerKind(name, op, kernel, stride, hw, gin, gout, cin=dense(gin), cout=dense(gout),
                         cin_fixed=fixed(gin), cout_fixed=fixed(gout), **fields)
        signature = tuple(sorted((k, v) for k, v in kind.to_dict().items() if k not in ("cin_group", "cout_group")))
        if signature not in seen:
            seen[signature] = name
            kinds[name] = kind
        layers.append((name, seen[signature], gin, gout))

    for i, op in enumerate(ops):
        if op["op"] == "gap":
            se = walk.squeeze_excite(i)
            if se is not None:
                fc1, fc2, act, gate = se
                claimed.update((fc1, fc2))
                add(ops[fc1]["name"], "se", 1, 1, ops[op["in"]]["hw"] if "hw" in ops[op["in"]] else op["hw"],
                    tgroup[op["in"]], ops[fc1]["group"], act=act, gate=gate)
        elif op["op"] == "conv" and i not in claimed:
            _add_conv(ops, walk, i, tgroup, add)
        elif op["op"] == "linear":
            end, act = walk.act(i)
            add(op["name"], "linear", 1, 1, 1, tgroup[op["in"]], op["group"], pad=0, act=act)
    return kinds, layers


def _add_conv(ops: List[Dict[str, Any]], walk: _Walk, i: int, tgroup: List[Optional[str]], add: Any) -> None:
    op = ops[i]
    end, act = walk.act(i)
    fused: Dict[str, Any] = {"pad": op["pad"], "dilation": op["dilation"], "depthwise": op["depthwise"], "act": act}
    j = walk.next(end, "add")
    # The Add joins the layer whose output reaches it last (a shortcut conv was computed before it).
    if j is not None and max(ops[j]["in"]) == end:
        _, post = walk.act(j)
        fused.update(residual=True, post_act=post)
    gin = tgroup[op["in"]]
    add(op["name"], "conv", op["kernel"], op["stride"], op["hw"], gin, op["group"], **fused)
