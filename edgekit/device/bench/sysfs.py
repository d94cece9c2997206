"""One reader for the kernel's sysfs and debugfs nodes: thermal zones, clocks, power rails, the board.

A node can fail in ways that a plain text `open(path).read()` does not survive. An offline thermal
zone (Orin Nano's cv zones) answers EAGAIN: CPython's raw file layer turns that into a read of None
and its text layer then raises TypeError, not OSError. debugfs wants root; a disabled zone answers
EINVAL. `read_node` reads with os.read, which raises BlockingIOError for EAGAIN like any other
OSError, and turns every failure into `Unreadable` with a reason a person can act on.

The node is opened O_NONBLOCK: sysfs and debugfs files ignore it, and nothing else found under
/sys (a FIFO left by a test, a driver node that waits for an event) can hang the bench.

Python 3.8 clean, no torch. Callers pass the path under their `root`, so tests use fake trees.
"""

import errno
import os
from typing import List, Optional

LIMIT = 1 << 16  # sysfs hands out at most a page; debugfs clock files are a few bytes


class Unreadable(Exception):
    """A node that exists (or not) but cannot be read; the message says why."""

    def __init__(self, path: str, message: str) -> None:
        super(Unreadable, self).__init__(message)
        self.path = path


def _why(path: str, exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "{} is not readable (permissions: run as root or adjust its mode)".format(path)
    if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
        return "{} is offline (it answers EAGAIN)".format(path)
    return "cannot read {}: {}".format(path, exc.strerror or exc)


def read_node(path: str) -> str:
    """The node's text, stripped of whitespace and NUL padding (device-tree strings end in NUL)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise Unreadable(path, _why(path, exc)) from None
    try:
        chunks: List[bytes] = []
        size = 0
        while size < LIMIT:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise Unreadable(path, _why(path, exc)) from None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace").replace("\x00", "").strip()


def read_optional(path: str) -> Optional[str]:
    """`read_node`, or None where the node cannot be read (a reader that records "unavailable")."""
    try:
        return read_node(path)
    except Unreadable:
        return None
