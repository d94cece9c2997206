"""Presets that ship inside the package, and the user's own beside them.

Recipes live in `edgekit/presets/recipes/`, targets in `edgekit/presets/targets/`, installed with the
package (a wheel, `pip install .`, the Docker images) and found through importlib.resources. A user's
own `./benchmarks/recipes/` and `./deploy/targets/` under the current folder are searched first, so
a file there wins on a name clash. Python 3.8 clean and torch-free.
"""

import importlib
import importlib.resources
import os
from typing import Dict, List, Optional, Tuple

KINDS = {
    # kind: (package holding the shipped presets, the user's folder under the current directory)
    "recipe": ("edgekit.presets.recipes", os.path.join("benchmarks", "recipes")),
    "target": ("edgekit.presets.targets", os.path.join("deploy", "targets")),
}


def _package_folder(package: str) -> str:
    files = getattr(importlib.resources, "files", None)
    if files is not None:  # Python 3.9+: the documented way; installed wheels unpack to real files
        return str(files(package))  # novm
    module = importlib.import_module(package)
    return os.path.dirname(os.path.abspath(module.__file__ or ""))


def search_path(kind: str) -> List[Tuple[str, str]]:
    """(label, folder) pairs searched in order for `kind` ("recipe" or "target")."""
    package, user = KINDS[kind]
    return [("./" + user.replace(os.sep, "/"), os.path.abspath(user)), ("shipped", _package_folder(package))]


def _names_in(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(p[:-5] for p in os.listdir(folder) if p.endswith(".yaml"))


def preset_names(kind: str) -> List[str]:
    """Every preset name of `kind`, the user's and the shipped ones, each once."""
    names: Dict[str, None] = {}
    for _, folder in search_path(kind):
        for name in _names_in(folder):
            names.setdefault(name, None)
    return sorted(names)


def find_preset(kind: str, name_or_path: str) -> Optional[str]:
    """A YAML path given as such, else the first preset of that name on the search path; None if none."""
    if os.path.sep in name_or_path or "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        return name_or_path if os.path.isfile(name_or_path) else None
    for _, folder in search_path(kind):
        path = os.path.join(folder, name_or_path + ".yaml")
        if os.path.isfile(path):
            return path
    return None
