"""Width specs: the shape of a (pruned) model as data, keyed by module name.

A pruned model is saved as a width spec plus a plain state_dict, so it reloads with
`torch.load(weights_only=True)` and no pickled module. The spec records every Conv2d, Linear and
BatchNorm2d of the model under its module name (`model.named_modules()`), in that order::

    {"format": "edgekit.width-spec/2",
     "arch": "mobilenet_v2",                       # the architecture plugin that builds the dense model
     "modules": {
       "features.0.0": {"type": "conv", "in": 3, "out": 24, "groups": 1,
                        "kernel": [3, 3], "stride": [2, 2], "padding": [1, 1], "dilation": [1, 1]},
       "features.0.1": {"type": "norm", "features": 24},
       "classifier.1": {"type": "linear", "in": 1280, "out": 10},
       ...}}

Channel counts are what pruning changes; the geometry (kernel, stride, padding, dilation) never
changes and lets a reader that has no model (the device's latency tables) see each layer's shape.
A depthwise convolution has groups = in = out. Any architecture that Torch-Pruning prunes is rebuilt
from its spec the same way (`edgekit.host.arch.widths`): build the dense model, then give each listed
module the recorded channel counts.

Files written before this format (`edgekit.model/1`) hold ResNet-50's own spec, `{"arch": "resnet50",
"stem": 64, "stages": [...]}`; `is_legacy` tells them apart and they still load.

Torch-free and Python 3.8 clean: the device side reads specs too.
"""

from typing import Any, Dict, List

from .errors import EdgekitError

FORMAT = "edgekit.width-spec/2"
_FIELDS = {
    "conv": ("in", "out", "groups", "kernel", "stride", "padding", "dilation"),
    "linear": ("in", "out"),
    "norm": ("features",),
}
_PAIRS = ("kernel", "stride", "padding", "dilation")

WidthSpec = Dict[str, Any]


def _bad(message: str) -> EdgekitError:
    return EdgekitError("malformed width spec: " + message)


def is_legacy(spec: Any) -> bool:
    """An `edgekit.model/1` ResNet-50 spec (stem and stages) rather than a module-keyed one."""
    return isinstance(spec, dict) and "format" not in spec and "stages" in spec


def check_width_spec(spec: Any) -> WidthSpec:
    """`spec` if it is a well-formed module-keyed width spec, else one EdgekitError saying what is wrong."""
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise _bad("expected a mapping with format {!r}, got {!r}".format(FORMAT, found))
    if not isinstance(spec.get("arch"), str) or not spec["arch"]:
        raise _bad("'arch' must name an architecture")
    modules = spec.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise _bad("'modules' must be a non-empty mapping of module name to shape")
    for name, entry in modules.items():
        _check_entry(name, entry)
    return spec


def _check_entry(name: Any, entry: Any) -> None:
    where = "modules[{!r}]".format(name)
    if not isinstance(name, str) or not isinstance(entry, dict) or entry.get("type") not in _FIELDS:
        raise _bad("{} must be a mapping with type conv, linear or norm".format(where))
    fields = _FIELDS[entry["type"]]
    extra = sorted(set(entry) - set(fields) - {"type"})
    if extra:
        raise _bad("{} has unknown key {!r} (a {} takes {})".format(where, extra[0], entry["type"], ", ".join(fields)))
    for key in fields:
        value = entry.get(key)
        low = 0 if key == "padding" else 1
        if key in _PAIRS:
            ok = isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= low for v in value)
            if not ok:
                raise _bad("{}.{} must be a pair of integers of at least {}, got {!r}".format(where, key, low, value))
        elif not (_is_int(value) and value >= 1):
            raise _bad("{}.{} must be a positive integer, got {!r}".format(where, key, value))
    if entry["type"] == "conv" and (entry["in"] % entry["groups"] or entry["out"] % entry["groups"]):
        raise _bad("{}.groups ({}) must divide in ({}) and out ({})".format(
            where, entry["groups"], entry["in"], entry["out"]))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def modules_of(spec: WidthSpec, kind: str) -> Dict[str, Dict[str, Any]]:
    """The entries of one type ("conv", "linear" or "norm"), by module name, in model order."""
    return {name: entry for name, entry in spec["modules"].items() if entry["type"] == kind}


def is_depthwise(entry: Dict[str, Any]) -> bool:
    return entry["type"] == "conv" and entry["groups"] > 1 and entry["groups"] == entry["in"] == entry["out"]


def stage_widths(spec: WidthSpec) -> List[int]:
    """A short summary for one-line logs: the output width of every strided convolution (where the
    resolution drops; a residual stage's shortcut and main branch each count) and of the last one."""
    if is_legacy(spec):
        return [spec["stem"]] + [s["out"] for s in spec["stages"]]
    convs = list(modules_of(spec, "conv").values())
    widths = [c["out"] for c in convs if max(c["stride"]) > 1]
    return widths + [convs[-1]["out"]] if convs else widths
