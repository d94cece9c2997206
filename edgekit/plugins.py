"""Plugins through Python entry points: how a package outside edgekit (or edgekit's own host side)
adds a runner, a latency backend or an architecture without any torch-free module naming it.

A plugin declares `[project.entry-points."edgekit.runners"] myrunner = "mypkg.runner:ENTRY"` in its
pyproject.toml; installing it writes that line into its `*.dist-info/entry_points.txt`, which
`importlib.metadata` reads here. Names are listed without importing anything; a plugin's module is
imported only when its name is asked for, and a missing dependency becomes one line that says what to
install. Python 3.8 clean and torch-free.
"""

import importlib
from typing import Any, Dict

from .errors import EdgekitError
from .lazy import install_hint

RUNNERS = "edgekit.runners"
LATENCY_BACKENDS = "edgekit.latency_backends"
ARCHITECTURES = "edgekit.architectures"


def entry_points(group: str) -> Dict[str, "importlib.metadata.EntryPoint"]:
    """The entry points of `group` by name; where two installed distributions declare one name, the
    first on sys.path wins (the one `import` would find)."""
    import importlib.metadata  # here, not at import: only a plugin lookup pays for the metadata scan

    found = importlib.metadata.entry_points()
    if hasattr(found, "select"):  # Python 3.10+
        points = found.select(group=group)
    else:  # Python 3.8 and 3.9: a dict of groups
        points = found.get(group, ())
    chosen: Dict[str, "importlib.metadata.EntryPoint"] = {}
    for point in points:
        chosen.setdefault(point.name, point)
    return chosen


def load(point: "importlib.metadata.EntryPoint", kind: str) -> Any:
    """The object `point` names (`kind`: "runner", "latency backend"...); an import that fails says in
    one line what is missing and how to install it."""
    try:
        return point.load()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "?").split(".")[0]
        raise EdgekitError("{} {!r} ({}) needs {}, which is not installed in this interpreter: {}".format(
            kind, point.name, point.value, missing, install_hint(missing))) from None
    except (ImportError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgekitError("{} {!r} ({}) failed to load: {}".format(kind, point.name, point.value, first)) from None
