"""Width specs on the torch side: read one from a model, rebuild a model from one.

The rebuild is the same for every architecture that Torch-Pruning pruned: build the dense model, then
replace each Conv2d, Linear and BatchNorm2d whose recorded channel counts differ by a module with the
same hyper-parameters and those counts. Pruning only ever changes channel counts, so the geometry in
the spec must match the dense model's; a spec that names other modules belongs to another model.
The format itself is `edgekit.widthspec` (torch-free).
"""

from typing import Any, Dict, List

import torch
from torch import nn

from ...errors import EdgekitError
from ...widthspec import FORMAT, check_width_spec

WidthSpec = Dict[str, Any]
RECORDED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _pair(value: Any) -> List[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


def module_entry(module: nn.Module) -> Dict[str, Any]:
    """A module's width-spec entry."""
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise ValueError("padding={!r} convolutions cannot be recorded: give numeric padding".format(
                module.padding))
        return {"type": "conv", "in": module.in_channels, "out": module.out_channels, "groups": module.groups,
                "kernel": _pair(module.kernel_size), "stride": _pair(module.stride),
                "padding": _pair(module.padding), "dilation": _pair(module.dilation)}
    if isinstance(module, nn.Linear):
        return {"type": "linear", "in": module.in_features, "out": module.out_features}
    return {"type": "norm", "features": module.num_features}


def width_spec_of(model: nn.Module, arch: str) -> WidthSpec:
    """Every Conv2d, Linear and BatchNorm2d of `model` by module name. A parametrised module of another
    type would not survive the rebuild, so it is refused here, when the model is saved."""
    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, RECORDED):
            modules[name] = module_entry(module)
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError("{} ({}) has parameters, but a width spec records Conv2d, Linear and BatchNorm2d "
                             "only".format(name, type(module).__name__))
    return {"format": FORMAT, "arch": arch, "modules": modules}


def _like(old: nn.Module, entry: Dict[str, Any]) -> nn.Module:
    """`old`'s hyper-parameters with `entry`'s channel counts (weights random: a state_dict follows)."""
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(entry["in"], entry["out"], old.kernel_size, old.stride, old.padding, old.dilation,
                         entry["groups"], bias=old.bias is not None, padding_mode=old.padding_mode)
    if isinstance(old, nn.Linear):
        return nn.Linear(entry["in"], entry["out"], bias=old.bias is not None)
    return nn.BatchNorm2d(entry["features"], eps=old.eps, momentum=old.momentum, affine=old.affine,
                          track_running_stats=old.track_running_stats)


def _differs(old: nn.Module, entry: Dict[str, Any], name: str, arch: Any) -> bool:
    dense = module_entry(old)
    if dense["type"] != entry["type"]:
        raise EdgekitError("width spec: {} is a {} in {}, the spec records a {}".format(
            name, dense["type"], arch.title, entry["type"]))
    for key in ("kernel", "stride", "padding", "dilation"):
        if key in dense and dense[key] != entry[key]:
            raise EdgekitError("width spec: {} has {} {} in {}, the spec records {} (pruning never changes "
                               "it: a spec of another model?)".format(name, key, dense[key], arch.title, entry[key]))
    return dense != entry


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def from_width_spec(arch: Any, spec: Any, num_classes: int) -> nn.Module:
    """`arch`'s model with the channel counts of `spec` (weights random: load a state_dict), checked by a
    forward pass at the architecture's smallest input."""
    spec = check_width_spec(spec)
    if spec["arch"] != arch.name:
        raise EdgekitError("width spec is of architecture {!r}, not {!r}".format(spec["arch"], arch.name))
    model = arch.build(num_classes)
    dense = {name: m for name, m in model.named_modules() if isinstance(m, RECORDED)}
    missing = [name for name in dense if name not in spec["modules"]]
    unknown = [name for name in spec["modules"] if name not in dense]
    if missing:
        raise EdgekitError("width spec does not fit {}: {} of its modules are missing (e.g. {})".format(
            arch.title, len(missing), missing[0]))
    if unknown:
        raise EdgekitError("width spec does not fit {}: it records {} modules {} does not have (e.g. {})".format(
            arch.title, len(unknown), arch.title, unknown[0]))
    for name, old in dense.items():
        entry = spec["modules"][name]
        if _differs(old, entry, name, arch):
            _replace(model, name, _like(old, entry))
    _check_chain(model, arch)
    return model


def _check_chain(model: nn.Module, arch: Any) -> None:
    """A spec whose widths do not follow from layer to layer fails on the first mismatched layer."""
    size, training = max(arch.min_image_size, arch.downsampling), model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
        model.train(training)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgekitError("width spec's channel counts do not chain in {}: {}".format(arch.title, first[:200])) \
            from None
