"""`benchmark`: one model (or one static engine per batch), its runner, the scenarios, power, thermal
and clocks, the environment, one result file; `benchmark_concurrent`: several engines at once."""

import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...artifacts import sha256_file, write_json_atomic
from ...errors import EdgekitError
from ..layout import BATCH_PLACEHOLDER, new_run_id
from ..layout import precision_of as _layout_precision
from ..runtime import registry
from ..runtime.base import Runner
from . import environment
from .accuracy import describe, feeding, load_eval_set, merge, score
from .power import (  # noqa: F401
    PowerSampler,
    PowerSource,
    PowerTrace,
    PowerUnavailable,
    detect_power_source,
    summarize_power,
    total_rule,
)
from .results import save_result
from .scenarios import Monitor, Monitors, concurrent_offline, export_times, offline, single_stream
from .thermal import ThermalMonitor


class PowerMonitor(Monitor):
    """Samples power over each measured window, against an idle baseline that `baseline` takes once,
    before any warm-up: after a warm-up the clocks are still high (or already falling), and the idle
    figure would be neither idle nor loaded.
    `total`: the board-total rule ("sum", a rail, or "A+B+C", see power.total_rule)."""

    def __init__(self, source: Optional[PowerSource], reasons: List[str], hz: float = 20.0,
                 idle_seconds: float = 2.0, total: str = "sum") -> None:
        self.source = source
        self.reasons = reasons
        self.hz = hz
        self.idle_seconds = idle_seconds
        self.total = total
        self.idle: Optional[PowerTrace] = None
        self.sampler: Optional[PowerSampler] = None

    def baseline(self) -> None:
        if self.source is None or self.idle is not None or self.idle_seconds <= 0:
            return
        with PowerSampler(self.source, self.hz) as idle:
            time.sleep(self.idle_seconds)
        self.idle = idle.trace

    def start(self) -> None:
        if self.source is not None:
            self.sampler = PowerSampler(self.source, self.hz).start()

    def stop(self, inferences: int, seconds: float) -> Dict[str, object]:
        if self.source is None or self.sampler is None:
            return {"power": {"status": "unavailable", "reason": "; ".join(self.reasons) or "no power source"}}
        trace = self.sampler.stop()
        return {"power": summarize_power(trace, inferences, seconds, self.idle, self.total)}

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def choose_runner(model_path: str, runner: str = "auto") -> Tuple[str, str, str]:
    """(runner, path to run, why), from the registry's entries (runtime/registry.py): a runner asked for by
    name runs the file, or the file of its own built from it (a TensorRT engine built from this ONNX);
    `auto` takes the first automatic runner that is installed here and can, in order of preference."""
    if runner != "auto":
        return _asked_for(registry.get(runner), model_path)
    passed_over: List[str] = []
    for entry in registry.automatic():
        version = entry.version() if entry.version else "?"
        if not version:
            passed_over.append("{} is not installed here".format(entry.name))
            continue
        if entry.runs(model_path):
            return entry.name, model_path, passed_over[-1] if passed_over else "{} {} runs {} files".format(
                entry.name, version, "/".join(entry.suffixes) or "any")
        built = entry.built_from.find(model_path) if entry.builds_from(model_path) else None
        if built:
            return entry.name, built, "{} {} is here and {} was built from this file".format(
                entry.name, version, os.path.basename(built))
        if entry.builds_from(model_path):
            passed_over.append("no {} file was built from this one yet".format(entry.name))
    # Nothing installed here runs it: the runner made for this kind of file says, when it activates, what to install.
    for entry in registry.automatic():
        if entry.suffixes and entry.runs(model_path):
            return entry.name, model_path, "; ".join(passed_over) or "runs {} files".format("/".join(entry.suffixes))
    raise EdgekitError("no automatic runner opens {}; name one with --runner: {}".format(
        model_path, ", ".join(registry.names())))


def _asked_for(entry: "registry.RunnerEntry", model_path: str) -> Tuple[str, str, str]:
    if entry.runs(model_path):
        return entry.name, model_path, "asked for"
    if not entry.builds_from(model_path):
        raise EdgekitError("the {} runner runs {} files, not {}".format(
            entry.name, "/".join(entry.suffixes), model_path))
    built = entry.built_from.find(model_path)  # type: ignore[union-attr]
    version = entry.version() if entry.version else "?"
    if not built or not version:
        raise EdgekitError("no {} file was built from {}{}: run {} first".format(
            "/".join(entry.suffixes), model_path, "" if version else " and {} is not installed here".format(entry.name),
            entry.built_from.command))  # type: ignore[union-attr]
    return entry.name, built, "asked for; {} {} is here and {} was built from this file".format(
        entry.name, version, os.path.basename(built))


def make_runner(model_path: str, runner: str = "auto", threads: Optional[int] = None,
                cuda_graph: bool = False, spin_wait: bool = False) -> Runner:
    """The runner `choose_runner` picks, made by its registry entry (cheap: nothing loads before `activate`)."""
    name, path, _ = choose_runner(model_path, runner)
    return registry.create(name, path, threads=threads, cuda_graph=cuda_graph, spin_wait=spin_wait)


def random_feed(runner: Runner, batch: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Inputs of the model's shapes and dtypes, filled with a fixed pseudo-random pattern."""
    rng = np.random.RandomState(seed)
    feed = {}
    for spec in runner.input_specs():
        shape = spec.concrete_shape(batch)
        if np.issubdtype(spec.dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = rng.randint(0, 2, size=shape).astype(spec.dtype)
    return feed


def _progress_printer(stream=None) -> Callable[..., None]:  # noqa: ANN001
    """A terminal gets one line per scenario, rewritten in place as it runs; a log (make deploy's,
    a job's) gets that line once, when the scenario is done."""
    def show(label: str, queries: int, seconds: float, done: bool = False) -> None:
        out = stream or sys.stderr
        terminal = out.isatty()
        if not terminal and not done:
            return
        out.write("{}  {:<18} {:>7} queries {:>6.1f} s{}".format(
            "\r" if terminal else "", label, queries, seconds, "\n" if done else ""))
        out.flush()
    return show


class _Runners(object):
    """The runner of each batch: one runner for a model path, or one per batch for a path with a
    `{batch}` placeholder (static-batch DLA engines, one per batch size); opened on first use, all
    closed at the end."""

    def __init__(self, model_path: str, runner: str, threads: Optional[int], cuda_graph: bool,
                 spin_wait: bool) -> None:
        self.model_path = model_path
        self.per_batch = BATCH_PLACEHOLDER in model_path
        self.options = dict(runner=runner, threads=threads, cuda_graph=cuda_graph, spin_wait=spin_wait)
        self.open: Dict[str, Runner] = {}
        self.chosen: Dict[str, Tuple[str, str, str]] = {}

    def path(self, batch: int) -> str:
        return self.model_path.replace(BATCH_PLACEHOLDER, str(batch)) if self.per_batch else self.model_path

    def choose(self, batch: int) -> Tuple[str, str, str]:
        path = self.path(batch)
        if path not in self.chosen:
            if self.per_batch and not os.path.exists(path):
                raise EdgekitError("{} names one engine per batch, but {} (batch {}) does not exist: build it "
                                   "with edgekit build-engine --batch {}".format(self.model_path, path, batch, batch))
            self.chosen[path] = choose_runner(path, str(self.options["runner"]))
        return self.chosen[path]

    def __call__(self, batch: int) -> Runner:
        path = self.path(batch)
        if path not in self.open:
            self.choose(batch)
            made = make_runner(path, str(self.options["runner"]), self.options["threads"],  # type: ignore[arg-type]
                               bool(self.options["cuda_graph"]), bool(self.options["spin_wait"]))
            self.open[path] = made.activate()
        return self.open[path]

    def close(self) -> None:
        for made in self.open.values():
            made.deactivate()
        self.open.clear()


def _power_monitor(power: bool, power_root: str, power_total: Optional[str],
                  idle_seconds: float) -> Tuple["PowerMonitor", str, str]:
    """The power sampler for the measured windows, and the rule that makes its board total.

    A total rule this board cannot follow (a named input rail it lacks) leaves power "unavailable" with
    that reason: a total from the wrong rails is no number at all, and the latency is still worth having.
    """
    source, reasons = detect_power_source(power_root) if power else (None, ["disabled (--no-power)"])
    rule, rule_why = "sum", "no power source"
    if source is not None:
        try:
            rule, rule_why = total_rule(source.rails(), power_total)
        except PowerUnavailable as exc:
            source.close()
            source, reasons = None, [str(exc)]
            rule, rule_why = "none", str(exc)
    return PowerMonitor(source, reasons, idle_seconds=idle_seconds, total=rule), rule, rule_why


def _swept(runners: "_Runners", first_batch: int, batches: Sequence[int], scenarios: Sequence[str]) -> List[int]:
    """The batches a run opened a model for: per-batch engines list each one."""
    if not runners.per_batch:
        return []
    return sorted({first_batch, *(batches if "offline" in scenarios else [])})


def _power_label(monitor: "PowerMonitor") -> str:
    if monitor.source is not None:
        return monitor.source.name
    return "unavailable ({})".format(monitor.reasons[-1] if monitor.reasons else "none")


def benchmark(model_path: str, out_path: Optional[str] = None, runner: str = "auto",
              threads: Optional[int] = None, scenarios: Sequence[str] = ("single_stream", "offline"),
              batches: Sequence[int] = (1, 2, 4, 8), warmup: int = 10, min_queries: int = 100,
              min_seconds: float = 3.0, max_seconds: Optional[float] = None, power: bool = True,
              power_root: str = "/", idle_seconds: float = 2.0, precision: Optional[str] = None,
              accuracy: Optional[Dict[str, object]] = None, cuda_graph: bool = False, progress: bool = True,
              labels: Optional[Dict[str, Optional[str]]] = None, eval_set: Optional[str] = None,
              log: Callable[[str], None] = print, warmup_ms: float = 0.0, spin_wait: bool = False,
              power_total: Optional[str] = None, soak_seconds: float = 0.0, export_times_path: Optional[str] = None,
              export_profile_path: Optional[str] = None, thermal_root: Optional[str] = None) -> Dict[str, object]:
    """Measure `model_path` and (if `out_path`) write the result JSON atomically; return it.

    `model_path` may hold `{batch}` (e.g. engines/student.int8.dla0.b{batch}.engine): each batch of the
    sweep then runs its own static engine, SingleStream the batch-1 one. `labels` (variant, target,
    placement, recipe) say what was measured where. `eval_set` (the host's eval.npz): this runner also
    scores those images, see `accuracy.merge`. `power_total`: "sum", a rail name, or None (auto, see
    power.total_rule). `soak_seconds`: run the model this long first, so the measured windows see a
    warm chip. `export_times_path` / `export_profile_path`: trtexec's --exportTimes (the SingleStream
    queries, else the first Offline batch's) and --exportProfile (TensorRT's per-layer profile) files.
    """
    _check_request(scenarios, batches)
    evaluation = load_eval_set(eval_set) if eval_set else None  # a bad file fails before minutes of timing
    runners = _Runners(model_path, runner, threads, cuda_graph, spin_wait)
    first_batch = 1 if "single_stream" in scenarios or not batches else batches[0]
    runtime_name, run_path, why = runners.choose(first_batch)
    for batch in (batches if "offline" in scenarios else []):
        runners.choose(batch)  # every engine of the sweep exists before anything is timed
    log("runner: {} ({})".format(runtime_name, why))
    power_monitor, rule, rule_why = _power_monitor(power, power_root, power_total, idle_seconds)
    timing = {"warmup": warmup, "warmup_ms": warmup_ms, "min_queries": min_queries, "min_seconds": min_seconds,
              "max_seconds": max_seconds}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        info = runners(first_batch).runtime_info()
        log("benchmark {} with {} {} ({}); power: {} (total: {})".format(
            model_path, info.get("runtime", info["runner"]), info.get("runtime_version", ""),
            info.get("providers", ""), _power_label(power_monitor), rule))
        specs = runners(first_batch).input_specs()
        measured = _measure(runners, first_batch, scenarios, batches, timing, evaluation, power_monitor,
                            Monitors([power_monitor, ThermalMonitor(thermal_root or power_root)]),
                            _progress_printer() if progress else None, soak_seconds, export_profile_path, log)
        if evaluation is not None:
            scored = measured.pop("scored")
            accuracy = merge(accuracy, scored, info.get("runtime", info["runner"]))
            log(describe(scored, accuracy["device_check"]))
            if runners.per_batch:
                accuracy["device_check"]["engine"] = runners.path(measured["eval_batch"])
    finally:
        runners.close()
        power_monitor.close()
    times_file = _times_file(export_times_path, measured["exported"], log)
    swept = _swept(runners, first_batch, batches, scenarios)
    result = {
        "run_id": new_run_id(),
        "created": started,
        "model": _model_record(model_path, run_path, runners, swept, precision, specs),
        "accuracy": accuracy,
        "labels": _labels(model_path, runtime_name, labels or {}),
        "runtime": info,
        "environment": environment.collect(threads=threads, runtime=info, precision=precision),
        "scenarios": measured["scenarios"],
        "power_source": power_monitor.source.name if power_monitor.source else None,
        "power_unavailable_reasons": power_monitor.reasons if power_monitor.source is None else [],
        "power_total": {"rule": rule, "why": rule_why},
        "throttled": _throttled(measured["scenarios"]),
        "soak": measured["soak"],
        "profile": measured["profile"],
        "times_file": times_file,
        "settings": dict(timing, batches=list(batches), spin_wait=spin_wait, cuda_graph=cuda_graph,
                         soak_seconds=soak_seconds, power_total=power_total or "auto"),
    }
    if out_path:
        save_result(out_path, result)
        log("wrote {}".format(out_path))
    return result


def _check_request(scenarios: Sequence[str], batches: Sequence[int]) -> None:
    unknown = [s for s in scenarios if s not in ("single_stream", "offline")]
    if unknown:
        raise EdgekitError("unknown scenario {}; choose single_stream, offline".format(", ".join(unknown)))
    if any(b < 1 for b in batches):
        raise EdgekitError("batch sizes must be positive, got {}".format(list(batches)))


def _eval_batch(scenarios: Sequence[str], batches: Sequence[int], per_batch: bool) -> int:
    """The batch the eval set is scored at: the largest swept batch the engine was built for, at most 32."""
    if "offline" not in scenarios or not batches:
        return 1
    fitting = [b for b in batches if b <= 32]
    return max(fitting) if per_batch and fitting else min(32, max(batches))


def _measure(runners: "_Runners", first_batch: int, scenarios: Sequence[str], batches: Sequence[int],
             timing: Dict[str, Any], evaluation: Optional[Any], power_monitor: "PowerMonitor", monitor: Monitor,
             show: Optional[Callable[..., None]], soak_seconds: float, export_profile_path: Optional[str],
             log: Callable[[str], None]) -> Dict[str, Any]:
    """Every check before timing, then the soak, the scenarios, the profile and (outside the timed windows)
    the eval set's score: {"scenarios", "soak", "profile", "exported", "scored", "eval_batch"}."""
    first = runners(first_batch)
    eval_batch = _eval_batch(scenarios, batches, runners.per_batch)
    if evaluation is not None:
        feeding(runners(eval_batch), evaluation.images, eval_batch)
    for batch in sorted({first_batch, *(batches if "offline" in scenarios else [])}):
        runners(batch).check_feed(random_feed(runners(batch), batch))  # e.g. beyond an engine's profile
    power_monitor.baseline()  # idle, before the soak and every warm-up
    found: Dict[str, Any] = {"soak": None, "profile": None, "exported": [], "eval_batch": eval_batch}
    if soak_seconds > 0:
        found["soak"] = _soak(first, first_batch, soak_seconds, log)

    def keep_times(label: str, records: List[Dict[str, float]], origin: Dict[str, float]) -> None:
        if not found["exported"]:
            found["exported"].append((label, records, origin))

    shared = dict(min_seconds=timing["min_seconds"], max_seconds=timing["max_seconds"], progress=show,
                  monitor=monitor, warmup_ms=timing["warmup_ms"], times=keep_times)
    results: Dict[str, object] = {}
    if "single_stream" in scenarios:
        results["single_stream"] = single_stream(runners(1), random_feed(runners(1), 1), warmup=timing["warmup"],
                                                 min_queries=timing["min_queries"], **shared)
    if "offline" in scenarios:
        results["offline"] = offline(None, lambda b: random_feed(runners(b), b), batches,
                                     warmup=max(1, timing["warmup"] // 3),
                                     min_queries=max(5, timing["min_queries"] // 5), runner_for=runners, **shared)
    found["scenarios"] = results
    if export_profile_path:
        found["profile"] = _profile(first, first_batch, export_profile_path, log)
    if evaluation is not None:
        found["scored"] = score(runners(eval_batch), evaluation.images, evaluation.targets, batch=eval_batch,
                                task=evaluation.task)
    return found


def _times_file(path: Optional[str], exported: List[Tuple[str, List[Dict[str, float]], Dict[str, float]]],
                log: Callable[[str], None]) -> Optional[Dict[str, object]]:
    """trtexec's --exportTimes file of the first timed window (SingleStream's queries, else Offline's first batch)."""
    if not path or not exported:
        return None
    label, records, origin = exported[0]
    write_json_atomic(path, export_times(records, origin))
    log("wrote {} ({} queries of {}, trtexec --exportTimes layout)".format(path, len(records), label))
    return {"path": path, "window": label, "queries": len(records)}


def _model_record(model_path: str, run_path: str, runners: "_Runners", swept: List[int], precision: Optional[str],
                  specs: Sequence[object]) -> Dict[str, object]:
    """What ran: the file (each per-batch engine too) with its digest, its precision and its inputs."""
    digests = {path: sha256_file(path) for path in {run_path, *(runners.path(b) for b in swept)}}
    model: Dict[str, object] = {"path": model_path, "ran": run_path, "sha256": digests[run_path],
                                "precision": precision or _layout_precision(model_path) or "unknown",
                                "inputs": [repr(s) for s in specs]}
    if runners.per_batch:
        model["engines"] = {str(b): {"path": runners.path(b), "sha256": digests[runners.path(b)]} for b in swept}
    return model


def _soak(runner: Runner, batch: int, seconds: float, log: Callable[[str], None]) -> Dict[str, object]:
    feed = random_feed(runner, batch)
    started, queries = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        runner.infer(feed, check=False)
        queries += 1
    soak = {"seconds": round(time.perf_counter() - started, 3), "queries": queries, "batch": batch}
    log("soaked {} queries over {:.1f} s before measuring".format(queries, soak["seconds"]))
    return soak


def _profile(runner: Runner, batch: int, path: str, log: Callable[[str], None]) -> Dict[str, object]:
    """TensorRT's per-layer profile into `path` (trtexec's --exportProfile layout); the 10 slowest
    layers go into the result. A runtime without a profiler records why."""
    from ..runtime.tensorrt import slowest_layers

    report = runner.profile_layers(random_feed(runner, batch), runs=10)
    if report is None:
        return {"status": "unavailable", "reason": "{} has no per-layer profiler (TensorRT's IProfiler only)".format(
            runner.name)}
    write_json_atomic(path, report)
    log("wrote {} (per-layer profile of {} layers, trtexec --exportProfile layout)".format(path, len(report) - 1))
    return {"path": path, "batch": batch, "runs": report[0]["count"], "slowest": slowest_layers(report, 10)}


def _throttled(results: Dict[str, object]) -> Optional[bool]:
    """True when any measured window was throttled, False when none was, None when none could tell."""
    flags = []
    for scenario in results.values():
        windows = [scenario] + list(scenario.get("rows", [])) if isinstance(scenario, dict) else []
        for window in windows:
            thermal = window.get("thermal") if isinstance(window, dict) else None
            if isinstance(thermal, dict):
                flags.append(thermal.get("throttled"))
    if any(flag is True for flag in flags):
        return True
    return False if any(flag is False for flag in flags) else None


def benchmark_concurrent(model_paths: Sequence[str], out_path: Optional[str] = None, runner: str = "auto",
                         threads: Optional[int] = None, batch: int = 1, warmup: int = 3, min_seconds: float = 3.0,
                         power: bool = True, power_root: str = "/", idle_seconds: float = 2.0,
                         power_total: Optional[str] = None, thermal_root: Optional[str] = None,
                         labels: Optional[Dict[str, Optional[str]]] = None, progress: bool = True,
                         log: Callable[[str], None] = print) -> Dict[str, object]:
    """Offline on several models at once (e.g. the GPU engine, DLA0's and DLA1's), one thread each;
    each model's share, the combined throughput, and the power of them all together."""
    if len(model_paths) < 2:
        raise EdgekitError("--concurrent needs two or more models, comma-separated (e.g. gpu.engine,dla0.engine)")
    if batch < 1:
        raise EdgekitError("batch must be positive, got {}".format(batch))
    paths = [p.replace(BATCH_PLACEHOLDER, str(batch)) for p in model_paths]
    chosen = [choose_runner(p, runner) for p in paths]
    power_monitor, rule, rule_why = _power_monitor(power, power_root, power_total, idle_seconds)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    opened: Dict[str, Runner] = {}
    try:
        for i, (path, (runtime, run_path, _)) in enumerate(zip(paths, chosen)):
            name = path if path not in opened else "{}#{}".format(path, i + 1)  # the same model twice
            opened[name] = registry.create(runtime, run_path, threads=threads).activate()
        log("concurrent offline: {} at batch {} together".format(", ".join(opened), batch))
        feeds = {name: random_feed(r, batch) for name, r in opened.items()}
        info = {name: r.runtime_info() for name, r in opened.items()}
        power_monitor.baseline()  # idle, before the warm-up
        measured = concurrent_offline(opened, feeds, min_seconds=min_seconds, warmup=warmup,
                                      monitor=Monitors([power_monitor, ThermalMonitor(thermal_root or power_root)]),
                                      progress=_progress_printer() if progress else None)
    finally:
        for r in opened.values():
            r.deactivate()
        power_monitor.close()
    first_info = next(iter(info.values()))
    concurrent = [{"path": c[1], "sha256": sha256_file(c[1]), "runtime": c[0]} for c in chosen]
    result = {
        "run_id": new_run_id(),
        "created": started,
        "model": {"path": ",".join(model_paths), "ran": [c[1] for c in chosen],
                  "sha256": concurrent[0]["sha256"], "precision": _layout_precision(paths[0]) or "unknown",
                  "concurrent": concurrent},
        "accuracy": None,
        "labels": dict(_labels(paths[0], chosen[0][0], labels or {}),
                       placement=(labels or {}).get("placement") or "concurrent"),
        "runtime": first_info,
        "runtimes": info,
        "environment": environment.collect(threads=threads, runtime=first_info),
        "scenarios": {"concurrent_offline": measured},
        "power_source": power_monitor.source.name if power_monitor.source else None,
        "power_unavailable_reasons": power_monitor.reasons if power_monitor.source is None else [],
        "power_total": {"rule": rule, "why": rule_why},
        "throttled": _throttled({"concurrent_offline": measured}),
        "settings": {"warmup": warmup, "min_seconds": min_seconds, "batch": batch,
                     "power_total": power_total or "auto"},
    }
    if out_path:
        save_result(out_path, result)
        log("wrote {}".format(out_path))
    return result


def _labels(model_path: str, runtime_name: str, given: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
    name = os.path.basename(model_path)
    variant = given.get("variant") or ("student" if name.startswith("model.") else name.split(".")[0])
    placement = given.get("placement")
    if not placement:
        dla = [part for part in name.split(".") if part in ("dla0", "dla1")]
        placement = dla[0] if dla else next(iter(registry.get(runtime_name).placements), "cpu")
    return {"variant": variant, "target": given.get("target") or "local", "placement": placement,
            "recipe": given.get("recipe")}
