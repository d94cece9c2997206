"""Python entry points, the way edgekit finds plugins that live in other packages.

A package adds to a registry by declaring an entry point in its metadata, for example in its
pyproject.toml::

    [project.entry-points."edgekit.architectures"]
    mynet = "mypackage.mynet:ARCHITECTURE"

Each registry names its group and loads an entry only when it is asked for, so a broken plugin
costs nothing until it is used. Python 3.8 clean and torch-free: the device side reads entry
points too.
"""

import importlib.metadata
from typing import Dict


def entry_points(group: str) -> Dict[str, "importlib.metadata.EntryPoint"]:
    """The entry points of `group` by name; where two distributions declare one name, the first on
    sys.path wins (as an import would)."""
    found = importlib.metadata.entry_points()
    if hasattr(found, "select"):  # Python 3.10+: selectable; the dict interface is deprecated there
        chosen = found.select(group=group)
    else:  # Python 3.8 and 3.9: a dict of group -> entry points
        chosen = found.get(group, ())
    named: Dict[str, "importlib.metadata.EntryPoint"] = {}
    for entry in chosen:
        named.setdefault(entry.name, entry)
    return named
