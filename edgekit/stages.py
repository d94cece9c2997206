"""Stages declared as data, and the one driver that runs them.

A `Stage` says what it is (`name`), what it needs (upstream `needs` and the recipe `sections` it reads),
what it writes (`outputs`) and how it computes (`compute`). The driver gives every stage its key the
same way:

    key = config_hash({config slice of `sections`,
                       each upstream stage's fingerprint (its key and its outputs' sha256),
                       the stage's declared `extra` inputs (e.g. a checkpoint file's sha256)})

A stage sees only what it declared: while its `compute` (and its `extra`, `enabled`, `on_force`) runs,
`ctx.recipe` and `ctx.config` are views that hand out its `sections` and its `reads` (settings that
change how it runs, not what it makes: `train.device`) and raise `UndeclaredRead` on anything else. A
value read but not declared would let a stage be reused after that value changed. `sections` may be a
function of the config, for a stage whose inputs depend on it (a latency-targeted spiral reads the
timing threads; a MACs-targeted one does not).

and reuses a stage when `manifest.json` holds that key with its outputs intact. `force` recomputes every
stage; `force_stages` recomputes the named ones and, transitively, everything downstream of them (a
student distilled from an old teacher is never kept). A stage whose `enabled` says no is skipped; the
stages that need it see it as absent ("skipped" in their key).

Distributed runs (torchrun): the driver talks to the world through a `World` hook whose default is one
process. Only the writer (rank 0) decides freshness, computes and records; the decision is broadcast, the
other ranks wait at a barrier and then read what the writer recorded in the manifest. A stage marked
`collective=True` (e.g. DDP training) is computed by every rank, and still recorded by the writer only.
A torchrun implementation provides `is_writer`, `barrier()` and `broadcast_object(obj)`:
`edgekit.host.dist.Dist` has exactly that shape and can be passed as the world.

Python 3.8 clean and torch-free: the driver knows nothing of models.
"""

import contextlib
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Union

from .artifacts import Manifest, config_hash, sha256_file
from .errors import EdgekitError

Metrics = Dict[str, Any]
SKIPPED = "skipped"


class World:
    """One process: it is the writer, barriers return at once, a broadcast returns its value."""

    rank = 0

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Every rank waits here until all have arrived (no-op for one process)."""

    def broadcast_object(self, value: Any) -> Any:
        """The writer's `value`, on every rank (identity for one process)."""
        return value


Sections = Union[Sequence[str], Callable[[Dict[str, Any]], Sequence[str]]]


class Stage(NamedTuple):
    name: str
    compute: Callable[["Context"], Metrics]
    needs: Sequence[str] = ()
    sections: Sections = ()                 # dotted recipe paths: "data", "quantize.method", "seed" (in the key)
    # files relative to the artifacts folder, or a function of the computed metrics naming them
    outputs: Union[Sequence[str], Callable[[Metrics], Sequence[str]]] = ()
    extra: Optional[Callable[["Context"], Any]] = None     # more key inputs: a checkpoint's sha256...
    enabled: Optional[Callable[["Context"], bool]] = None
    on_force: Optional[Callable[["Context"], None]] = None  # before a forced recompute: drop resume state
    collective: bool = False                # every rank computes (DDP training); the writer records
    reads: Sequence[str] = ()               # recipe paths it may read that are not in its key (how, not what)

    def declared(self, config: Dict[str, Any]) -> Sequence[str]:
        """Its `sections` for this config."""
        return tuple(self.sections(config) if callable(self.sections) else self.sections)


class Result(NamedTuple):
    name: str
    key: str
    fingerprint: str
    metrics: Metrics
    seconds: float
    reused: bool


class Context:
    """What a stage's compute sees: the recipe, its folder, the log, upstream results, shared objects.

    `cache(name, make)` memoises objects that several stages use (the data, the loaded models), so a
    fully reused run never builds them.
    """

    def __init__(self, recipe: Any, config: Dict[str, Any], out_dir: str, log: Callable[[str], None],
                 world: World) -> None:
        self.recipe = recipe
        self.config = config
        self.out_dir = out_dir
        self.log = log
        self.world = world
        self.results: Dict[str, Result] = {}
        self.key = ""                       # the key of the stage being computed (resume checkpoints use it)
        self._cache: Dict[str, Any] = {}

    def metrics(self, stage: str) -> Metrics:
        """An upstream stage's metrics ({} when it was skipped)."""
        found = self.results.get(stage)
        return found.metrics if found else {}

    def ran(self, stage: str) -> bool:
        return stage in self.results

    def cache(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)

    @contextlib.contextmanager
    def seeing(self, stage: Stage) -> Iterator[None]:
        """`recipe` and `config` as `stage` may read them (its sections and reads), while it runs."""
        recipe, config = self.recipe, self.config
        paths = tuple(stage.declared(config)) + tuple(stage.reads)
        self.recipe, self.config = DeclaredView(recipe, stage.name, paths), DeclaredView(config, stage.name, paths)
        try:
            yield
        finally:
            self.recipe, self.config = recipe, config


class UndeclaredRead(Exception):
    """A stage read a recipe value it did not declare: a bug in its declaration (a plain exception)."""


def _covered(path: str, paths: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in paths)


class DeclaredView(object):
    """The recipe object (attributes) or config dict (items) as one stage may read it: a declared path
    and everything under it; an object above a declared path, as a view again; anything else raises
    UndeclaredRead naming the stage and the path."""

    def __init__(self, target: Any, stage: str, paths: Sequence[str], prefix: str = "") -> None:
        self._target, self._stage, self._paths, self._prefix = target, stage, tuple(paths), prefix

    def _open(self, name: str, read: Callable[[], Any]) -> Any:
        path = self._prefix + str(name)
        if _covered(path, self._paths):
            return read()
        if any(p.startswith(path + ".") for p in self._paths):
            return DeclaredView(read(), self._stage, self._paths, path + ".")
        raise UndeclaredRead("stage {} reads recipe {} but declares only {}: add it to the stage's sections "
                             "(or reads, if it does not change what the stage makes)".format(
                                 self._stage, path, ", ".join(self._paths) or "nothing"))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe these: no recipe value has such a name
            raise AttributeError(name)
        return self._open(name, lambda: getattr(self._target, name))

    def __getitem__(self, key: str) -> Any:
        return self._open(key, lambda: self._target[key])

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._target else default

    def to_dict(self) -> Dict[str, Any]:
        """The declared part of the recipe, as `Recipe.to_dict` would give it."""
        return _declared_part(self._target.to_dict(), self._paths, self._prefix)


def _declared_part(data: Dict[str, Any], paths: Sequence[str], prefix: str) -> Dict[str, Any]:
    found = {}
    for key, value in data.items():
        path = prefix + key
        if _covered(path, paths):
            found[key] = value
        elif isinstance(value, dict) and any(p.startswith(path + ".") for p in paths):
            found[key] = _declared_part(value, paths, path + ".")
    return found


def config_slice(config: Dict[str, Any], sections: Iterable[str]) -> Dict[str, Any]:
    """The recipe values at each dotted path (a missing one is an error in the stage's declaration)."""
    found = {}
    for path in sections:
        value: Any = config
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError("stage reads recipe section {!r}, which the recipe does not have".format(path))
            value = value[part]
        found[path] = value
    return found


def downstream(stages: Sequence[Stage], names: Iterable[str]) -> Set[str]:
    """`names` and every stage that needs one of them, transitively (stages are in dependency order)."""
    closed = set(names)
    for stage in stages:
        if closed & set(stage.needs):
            closed.add(stage.name)
    return closed


def check_declaration(stages: Sequence[Stage]) -> None:
    seen: Set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError("stage {} is declared twice".format(stage.name))
        late = [n for n in stage.needs if n not in seen]
        if late:
            raise ValueError("stage {} needs {}, which is not declared before it".format(stage.name, late[0]))
        seen.add(stage.name)


def stage_key(stage: Stage, ctx: Context) -> str:
    inputs = {name: ctx.results[name].fingerprint if name in ctx.results else SKIPPED for name in stage.needs}
    config = config_slice(ctx.config, stage.declared(ctx.config))
    with ctx.seeing(stage):
        extra = stage.extra(ctx) if stage.extra else None
    return config_hash({"stage": stage.name, "config": config, "inputs": inputs, "extra": extra})


def _fingerprint(key: str, manifest: Manifest, name: str) -> str:
    """What downstream keys see of a stage: its key and the exact bytes it wrote."""
    return config_hash({"key": key, "outputs": manifest.get(name).get("outputs", {})})


def _output_list(stage: Stage, metrics: Metrics) -> List[str]:
    return list(stage.outputs(metrics) if callable(stage.outputs) else stage.outputs)


def _declared_recorded(stage: Stage, manifest: Manifest) -> bool:
    """Every output the stage declares now was recorded when it ran: a stage that has come to write
    another file (a newer edgekit) recomputes instead of being reused without it."""
    entry = manifest.get(stage.name)
    return set(_output_list(stage, dict(entry.get("metrics", {})))) <= set(entry.get("outputs", {}))


def _run_one(stage: Stage, ctx: Context, manifest: Manifest, forced: bool) -> Result:
    key = stage_key(stage, ctx)
    world = ctx.world
    fresh = world.broadcast_object(not forced and manifest.is_fresh(stage.name, key) and _declared_recorded(
        stage, manifest) if world.is_writer else None)
    if fresh:
        entry = manifest.get(stage.name)
        ctx.log("[{}] up to date, reused ({:.1f} s when computed)".format(stage.name, entry["seconds"]))
        return Result(stage.name, key, _fingerprint(key, manifest, stage.name), dict(entry.get("metrics", {})),
                      entry["seconds"], True)
    if world.is_writer and forced and stage.on_force:
        with ctx.seeing(stage):
            stage.on_force(ctx)
    world.barrier()  # the writer's cleanup is done before anyone computes
    metrics: Metrics = {}
    ctx.key = key
    start = time.perf_counter()
    if world.is_writer or stage.collective:
        with ctx.seeing(stage):
            metrics = stage.compute(ctx)
    seconds = round(time.perf_counter() - start, 3)
    if world.is_writer:
        manifest.record(stage.name, key, _output_list(stage, metrics), seconds, metrics)
    world.barrier()
    if not world.is_writer:
        manifest = Manifest(manifest.folder)  # read what the writer recorded
        metrics = dict(manifest.get(stage.name).get("metrics", {}))
    return Result(stage.name, key, _fingerprint(key, manifest, stage.name), metrics, seconds, False)


def run_stages(stages: Sequence[Stage], ctx: Context, force: bool = False,
               force_stages: Sequence[str] = ()) -> Dict[str, Result]:
    """Run `stages` in order into `ctx.out_dir`; return each run (or reused) stage's result by name."""
    check_declaration(stages)
    names = [s.name for s in stages]
    unknown = [n for n in force_stages if n not in names]
    if unknown:
        raise EdgekitError("unknown stage {}; stages are {}".format(unknown[0], ", ".join(names)))
    forced = set(names) if force else downstream(stages, force_stages)
    manifest = Manifest(ctx.out_dir)
    for stage in stages:
        if stage.enabled is not None and not _enabled(stage, ctx):
            continue
        ctx.results[stage.name] = _run_one(stage, ctx, manifest, stage.name in forced)
    return ctx.results


def _enabled(stage: Stage, ctx: Context) -> bool:
    with ctx.seeing(stage):
        return bool(stage.enabled(ctx))  # type: ignore[misc]


def file_digest(path: Optional[str]) -> Optional[str]:
    """A declared extra input: a file's sha256, or the path itself when it is not a file (yet)."""
    return sha256_file(path) if path and os.path.isfile(path) else path
