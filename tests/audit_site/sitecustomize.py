"""Test-only: with EDGEKIT_AUDIT_OUT set, every torchrun worker started with this folder on PYTHONPATH records
each write it makes under that folder (a Python audit hook: os.open for writing, renames, mkdir,
removals, whoever calls them) and, at exit, dumps them to <EDGEKIT_AUDIT_OUT>.rank<RANK>.json."""

import atexit
import json
import os
import sys

_OUT = os.environ.get("EDGEKIT_AUDIT_OUT")
if _OUT and "RANK" in os.environ:  # torchrun's workers, not the launcher itself
    _REAL = os.path.realpath(_OUT)
    _WRITES = []

    def _inside(path):
        real = os.path.realpath(path)
        return real == _REAL or real.startswith(_REAL + os.sep)

    def _audit(event, args):
        path = None
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                path = args[0]
        elif event in ("os.replace", "os.rename") and len(args) > 1:
            path = args[1]
        elif event in ("os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree") and args:
            path = args[0]
        if isinstance(path, (str, bytes)) and _inside(os.fsdecode(path)):
            _WRITES.append([event, os.fsdecode(path)])

    def _dump():
        rank = os.environ.get("RANK", "0")
        with open("{}.rank{}.json".format(_OUT.rstrip("/"), rank), "w", encoding="utf-8") as f:
            json.dump({"rank": int(rank), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                       "argv": sys.argv, "writes": _WRITES}, f)

    sys.addaudithook(_audit)
    atexit.register(_dump)
