"""One run per artifacts folder: an exclusive lock on `<folder>/.edgekit.lock`.

The lock is an `fcntl.flock` on the file, so the kernel releases it when its holder exits, however it
exits (kill -9 included): a lock left by a killed run is simply free, and taking it over has no race.
The file's content (pid, host, command, since) is only what the refusal message says about the holder.
The file itself stays: deleting it would let a new run lock a fresh inode while another still holds
the old one.

Re-entrant within one process (deploy takes the folder, then runs the host stages in it). Under
torchrun only the writer rank (RANK 0) takes it; the other ranks of the same job share the writer's.

Python 3.8 clean and torch-free; POSIX only (fcntl), like the devices it runs on.
"""

import contextlib
import json
import os
import socket
import sys
import time
from typing import Any, Dict, Iterator, Optional, Sequence

from .device import layout
from .errors import EdgekitError

# realpath of the lock file -> [open file object, depth]: this process's held locks
_HELD: Dict[str, list] = {}


def writer_rank() -> bool:
    """True unless this process is a non-zero rank of a torchrun job."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def holder(folder: str) -> Optional[Dict[str, Any]]:
    """What the lock file says about its last holder (None when unreadable or never taken)."""
    try:
        with open(os.path.join(folder, layout.LOCK), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _refusal(folder: str) -> EdgekitError:
    who = holder(folder) or {}
    command = " ".join(who.get("command") or []) or "?"
    return EdgekitError("artifacts folder {} is in use by pid {} on {} ({}) since {}; wait for it to finish, "
                        "stop it, or give another --out".format(folder, who.get("pid", "?"), who.get("host", "?"),
                                                                command, who.get("since", "?")))


@contextlib.contextmanager
def folder_lock(folder: str, command: Optional[Sequence[str]] = None) -> Iterator[None]:
    """Hold `folder` for this run; raise EdgekitError naming the holder when another process has it."""
    if not writer_rank():
        yield
        return
    import fcntl

    os.makedirs(folder, exist_ok=True)
    path = os.path.realpath(os.path.join(folder, layout.LOCK))
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise _refusal(folder) from None
    try:
        handle.seek(0)
        handle.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": list(command or sys.argv),
                   "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, handle)
        handle.flush()
        _HELD[path] = [handle, 1]
        yield
    finally:
        _HELD.pop(path, None)
        handle.close()  # releases the flock
