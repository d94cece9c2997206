"""Architecture plugins: one file per model family, found by name.

`model.arch` in a recipe names an architecture. The built-ins live beside this file (resnet.py,
mobilenet_v2.py, mobilenet_v3.py, efficientnet.py); any installed package adds its own with a Python
entry point in the group `edgekit.architectures`, `name = "module:object"`, where the object is an
`Architecture` (base.py says what one holds). Adding an architecture is that one file plus a preset
recipe; nothing else in edgekit names a family.

Plugins are imported when first asked for, so a broken one fails only the runs that use it, with one
line naming it.
"""

import importlib
from typing import Any, Dict, List

from ...errors import EdgekitError
from ...plugins import ARCHITECTURES, entry_points
from .base import Architecture
from .checkpoint import load_any, load_student, save_student
from .counting import count_macs_params

GROUP = ARCHITECTURES
BUILTIN = {
    "resnet50": "edgekit.host.arch.resnet:RESNET50",
    "mobilenet_v2": "edgekit.host.arch.mobilenet_v2:MOBILENET_V2",
    "mobilenet_v3_large": "edgekit.host.arch.mobilenet_v3:MOBILENET_V3_LARGE",
    "efficientnet_b0": "edgekit.host.arch.efficientnet:EFFICIENTNET_B0",
}
_LOADED: Dict[str, Architecture] = {}

__all__ = ["Architecture", "architecture", "names", "register", "check_recipe", "count_macs_params",
           "load_any", "load_student", "save_student"]


def names() -> List[str]:
    """Every architecture name: built in, registered in this process, and declared by entry points."""
    return sorted(set(BUILTIN) | set(_LOADED) | set(entry_points(GROUP)))


def register(arch: Architecture) -> Architecture:
    """Add an architecture in this process (a notebook, a script); packages use the entry point."""
    checked = _checked(arch, getattr(arch, "name", "?"), "register()")
    _LOADED[checked.name] = checked
    return checked


def architecture(name: str) -> Architecture:
    """The architecture called `name`, or one line naming the registered ones."""
    if name not in _LOADED:
        source = _source(name)
        _LOADED[name] = _checked(_import(name, source), name, source)
    return _LOADED[name]


def _source(name: str) -> str:
    declared = entry_points(GROUP).get(name)
    if name in BUILTIN:
        if declared is not None and declared.value != BUILTIN[name]:
            raise EdgekitError("model.arch {!r} is built in, and entry point {} (group {}) declares it again; "
                               "give the plugin another name".format(name, declared.value, GROUP))
        return BUILTIN[name]
    if declared is None:
        raise EdgekitError("unknown model.arch {!r}; registered architectures: {} (a package adds one with an "
                           "entry point in the group {})".format(name, ", ".join(names()), GROUP))
    return declared.value


def _import(name: str, source: str) -> Any:
    module, _, attr = source.partition(":")
    try:
        found: Any = importlib.import_module(module.strip())
        for part in attr.strip().split(".") if attr.strip() else []:
            found = getattr(found, part)
    except Exception as exc:  # noqa: BLE001 - whatever a plugin raises on import, name the plugin
        first = (str(exc).strip().splitlines() or [""])[0]
        raise EdgekitError("architecture {!r} ({}) failed to load: {}: {}".format(
            name, source, type(exc).__name__, first)) from None
    return found() if isinstance(found, type) and issubclass(found, Architecture) else found


def _checked(arch: Any, name: str, source: str) -> Architecture:
    if not isinstance(arch, Architecture):
        raise EdgekitError("architecture {!r} ({}) is a {}, not an edgekit.host.arch.Architecture".format(
            name, source, type(arch).__name__))
    if arch.name != name or not arch.head or not isinstance(arch.min_image_size, int):
        raise EdgekitError("architecture {!r} ({}) must set name = {!r}, head (the classifier's module name) and "
                           "an integer min_image_size".format(name, source, name))
    return arch


def check_recipe(recipe: Any) -> Architecture:
    """What only the architecture can judge in a recipe, checked before any stage runs."""
    arch = architecture(recipe.model.arch)
    sizes = [("data.image_size", recipe.data.image_size)]
    if recipe.compare.enabled:
        sizes.append(("compare.image_size", recipe.compare.image_size))
    if recipe.prune.target == "latency":
        sizes.append(("prune.latency_image_size", recipe.prune.latency_image_size))
    for key, size in sizes:
        if size < arch.min_image_size:
            raise EdgekitError("recipe: {} must be at least {} for {} (it downsamples {}x), got {}".format(
                key, arch.min_image_size, arch.title, arch.downsampling, size))
    if recipe.prune.target == "latency" and not arch.latency_target:
        raise EdgekitError("recipe: prune.target latency needs a latency table of the architecture's layers, "
                           "and {} does not describe them (latency_target = False); use prune.target: macs"
                           .format(arch.title))
    return arch
