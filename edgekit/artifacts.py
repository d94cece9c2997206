"""Artifacts on disk: atomic writes, content hashes and the stage manifest.

Every file a stage produces is written to a temporary file in the same folder and renamed into
place, so an interrupted run never leaves a half-written artifact behind. `manifest.json` records,
per stage, the hash of its configuration and inputs and the sha256 of its outputs; a re-run with the
same configuration reuses the stage when its outputs are still intact.

Python 3.8 clean and torch-free: the device side reads manifests too.
"""

import contextlib
import hashlib
import json
import os
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

MANIFEST_NAME = "manifest.json"


def _file_mode() -> int:
    """What open() would give a new file under the current umask (mkstemp's 0600 would make results
    and dashboards unreadable to a web server or a container running as another user)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        if os.path.exists(tmp):
            os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str) -> Any:
    """A JSON file's content, or one EdgekitError saying it is unreadable or cut short."""
    from .errors import EdgekitError

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as exc:
        raise EdgekitError("{} is not valid JSON ({}); was it cut short?".format(path, exc)) from None
    except OSError as exc:
        raise EdgekitError("cannot read {}: {}".format(path, exc.strerror or exc)) from None


def remove_if_exists(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(obj: Any) -> str:
    """A stable short hash of a JSON-able configuration."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Manifest:
    """`manifest.json` of one artifacts folder: which stages ran, with what, producing what."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, MANIFEST_NAME)
        self.stages: Dict[str, Dict[str, Any]] = {}
        if os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    self.stages = json.load(f).get("stages", {})
            except (ValueError, OSError):
                # A damaged manifest only costs recomputation; it never blocks a run.
                self.stages = {}

    def is_fresh(self, stage: str, key: str) -> bool:
        """True when `stage` ran with `key` and all its recorded outputs are intact."""
        entry = self.stages.get(stage)
        if not entry or entry.get("key") != key:
            return False
        for rel, digest in entry.get("outputs", {}).items():
            path = os.path.join(self.folder, rel)
            if not os.path.exists(path) or sha256_file(path) != digest:
                return False
        return True

    def record(self, stage: str, key: str, outputs: List[str], seconds: float,
               metrics: Optional[Dict[str, Any]] = None) -> None:
        self.stages[stage] = {
            "key": key,
            "outputs": {rel: sha256_file(os.path.join(self.folder, rel)) for rel in outputs},
            "seconds": round(seconds, 3),
            "metrics": metrics or {},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(self.path, {"version": 1, "stages": self.stages})

    def get(self, stage: str) -> Dict[str, Any]:
        return self.stages.get(stage, {})


def run_stage(manifest: Manifest, stage: str, key: str, outputs: List[str],
              compute: Callable[[], Dict[str, Any]], force: bool = False,
              log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run `compute` unless the manifest says the stage is fresh; return its metrics.

    Returns the metrics dict with two extra keys: `seconds` (of the original computation) and
    `reused` (whether this call skipped it).
    """
    if not force and manifest.is_fresh(stage, key):
        entry = manifest.get(stage)
        log("[{}] up to date, reused ({:.1f} s when computed)".format(stage, entry["seconds"]))
        return dict(entry.get("metrics", {}), seconds=entry["seconds"], reused=True)
    start = time.perf_counter()
    metrics = compute()
    seconds = time.perf_counter() - start
    manifest.record(stage, key, outputs, seconds, metrics)
    return dict(metrics, seconds=round(seconds, 3), reused=False)
