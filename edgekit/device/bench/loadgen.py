"""`edgekit bench --harness loadgen`: the same runners under MLPerf LoadGen (mlcommons-loadgen).

LoadGen decides what to issue and when, times every sample itself and judges each run VALID or
INVALID (minimum duration, minimum queries, early stopping). edgekit supplies the two parts LoadGen
asks for: the query sample library (the bundle's eval.npz in RAM, or random images of the model's
shape) and the system under test (the runner `edgekit bench` times: `with runner:`, then `infer`).

Scenarios: SingleStream (one sample a query), MultiStream (8 samples a query, one batch, p99) and
Offline (one query of every sample, run in batches of `batch`). Modes: performance, and accuracy
(every eval image once; top-1 from LoadGen's mlperf_log_accuracy.json). The logs go into an
Open-division-style tree (mlperf_logs.py). LoadGen's own minimums (600 s) are overridden by
`min_seconds`/`min_queries`; the result records the settings beside the verdict.

LoadGen is imported only here, lazily: mlcommons-loadgen 6.0.17 ships x86_64 wheels; on a Jetson
(aarch64, Python 3.8) pip builds it from the source distribution. Python 3.8 clean, no torch.
"""

import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from ...errors import EdgekitError
from ...lazy import lazy_import
from ..layout import BATCH_PLACEHOLDER, mlperf_logs_path
from ..runtime.base import Runner, TensorSpec
from . import mlperf_logs
from .stats import latency_stats

SCENARIOS = ("single_stream", "multi_stream", "offline")
MODES = ("performance", "accuracy")
MULTI_STREAM_SAMPLES = 8
LOADGEN_NAMES = {"single_stream": "SingleStream", "multi_stream": "MultiStream", "offline": "Offline"}
OFFLINE_OPTIMISM = 1.5
# How many times a run that ended before min_duration is planned again (see performance_run).
REPLANS = 3
# Random images stand in for the eval set when a performance run is given none.
SYNTHETIC_SAMPLES = 64


def loadgen_module() -> Any:
    """mlperf_loadgen, or one EdgekitError naming the install command (edgekit.lazy's hint)."""
    return lazy_import("mlperf_loadgen")


class Settings(NamedTuple):
    """What a LoadGen run is asked for. `min_queries`: queries (SingleStream, MultiStream) or, times
    the batch, samples (Offline); `min_seconds`: LoadGen's min_duration."""
    min_queries: int = 100
    min_seconds: float = 3.0
    batch: int = 8            # Offline: samples per inference
    warmup: int = 10          # inferences before LoadGen starts, also the latency estimate LoadGen is given
    performance_samples: int = 1024
    # LoadGen's early stopping needs 662 queries for MultiStream's p99 (fewer: INVALID, whatever the duration)
    multi_stream_queries: int = 662
    max_queries: int = 0      # LoadGen's max_query_count; 0: no cap (a cap below the minimums makes the run INVALID)


class SampleLibrary(object):
    """LoadGen's query sample library: images (N, C, H, W) already in RAM, labels for accuracy runs."""

    def __init__(self, images: np.ndarray, labels: Optional[np.ndarray], source: str) -> None:
        self.images = images
        self.labels = labels
        self.source = source
        self.loaded = 0

    @classmethod
    def synthetic(cls, spec: TensorSpec, count: int = SYNTHETIC_SAMPLES, seed: int = 0) -> "SampleLibrary":
        shape = [count] + spec.concrete_shape(1)[1:]
        images = np.random.RandomState(seed).standard_normal(shape).astype(spec.dtype)
        return cls(images, None, "random images ({} of {})".format(count, spec.shape_text()))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def gather(self, indices: Sequence[int], batch: int) -> np.ndarray:
        """The images at `indices`, padded to `batch` by repeating the last (a static engine's shape)."""
        picked = list(indices) + [indices[-1]] * (batch - len(indices))
        return np.ascontiguousarray(self.images[picked])

    # LoadGen's load/unload callbacks: everything is in RAM already, so they only count
    def load(self, indices: Sequence[int]) -> None:
        self.loaded = len(indices)

    def unload(self, indices: Sequence[int]) -> None:
        self.loaded = 0


class SystemUnderTest(object):
    """LoadGen's SUT over edgekit runners. `runner_for(batch)`: the active runner for a batch size.

    IssueQuery runs each query on LoadGen's thread, `batch` samples an inference, and answers each
    sample with its predicted class. An exception is kept (LoadGen cannot take one from a callback)
    and the samples are answered empty, so the test ends and the caller re-raises it."""

    def __init__(self, lg: Any, runner_for: Callable[[int], Runner], library: SampleLibrary, batch: int) -> None:
        self.lg = lg
        self.runner_for = runner_for
        self.library = library
        self.batch = batch
        self.records: List[Dict[str, float]] = []
        self.error: Optional[BaseException] = None

    def issue(self, samples: Sequence[Any]) -> None:
        step = self.batch
        for start in range(0, len(samples), step):
            chunk = samples[start:start + step]
            try:
                predicted = self._infer([s.index for s in chunk], step)
            except BaseException as exc:  # noqa: BLE001 - re-raised by `run` once LoadGen has stopped
                self.error = self.error or exc
                self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(s.id, 0, 0) for s in chunk])
                continue
            address = predicted.ctypes.data
            size = mlperf_logs.RESPONSE_DTYPE.itemsize
            self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(s.id, address + i * size, size)
                                          for i, s in enumerate(chunk)])

    def _infer(self, indices: List[int], batch: int) -> np.ndarray:
        runner = self.runner_for(batch)
        spec = runner.input_specs()[0]
        outputs = runner.infer({spec.name: self.library.gather(indices, batch)}, check=False)
        logits = np.asarray(outputs[runner.output_names()[0]])
        self.records.append(runner.last_timings())
        return np.ascontiguousarray(logits[:len(indices)].argmax(1).astype(mlperf_logs.RESPONSE_DTYPE))

    def flush(self) -> None:
        pass


def _estimate_seconds(sut: "SystemUnderTest", warmup: int, typical: bool) -> float:
    """Seconds the SUT takes per inference (gather, infer, argmax) over `warmup` runs: the fastest
    (SingleStream, MultiStream: a fast estimate only makes LoadGen plan more queries than it issues)
    or the median (Offline: LoadGen sizes its one query by it, so a fast estimate would make the run
    last many times min_duration)."""
    indices = list(range(min(sut.batch, len(sut.library))))
    times = []
    for _ in range(max(3, warmup)):
        started = time.perf_counter()
        sut._infer(indices, sut.batch)
        times.append(time.perf_counter() - started)
    sut.records.clear()
    return max(float(np.median(times)) if typical else min(times), 1e-6)


def test_settings(lg: Any, scenario: str, mode: str, settings: Settings, seconds_per_batch: float) -> Any:
    """LoadGen's TestSettings with MLPerf's minimums replaced by `settings` (min query count, min duration)."""
    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, LOADGEN_NAMES[scenario])
    ts.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly
    ts.min_duration_ms = int(round(settings.min_seconds * 1000))
    ts.min_query_count = max(1, settings.min_queries)
    if scenario == "single_stream":
        ts.single_stream_expected_latency_ns = int(seconds_per_batch * 1e9)
    elif scenario == "multi_stream":
        ts.multi_stream_samples_per_query = MULTI_STREAM_SAMPLES
        ts.multi_stream_expected_latency_ns = int(seconds_per_batch * 1e9)
        ts.min_query_count = max(ts.min_query_count, settings.multi_stream_queries)
    else:
        # One query of max(min_query_count, 1.1 x min_duration x expected qps) samples: a run that turns out
        # faster than the warm-up said ends before min_duration and is INVALID (seen on a busy machine with
        # the median alone), so the estimate is taken half as fast again.
        ts.offline_expected_qps = OFFLINE_OPTIMISM * settings.batch / seconds_per_batch
        ts.min_query_count = max(1, settings.min_queries) * settings.batch
    if settings.max_queries > 0:
        ts.max_query_count = settings.max_queries
    return ts


def log_settings(lg: Any, folder: str) -> Any:
    logs = lg.LogSettings()
    logs.log_output.outdir = folder
    logs.log_output.copy_summary_to_stdout = False
    logs.enable_trace = False  # the trace is megabytes a second and nothing here reads it
    return logs


def run(runner_for: Callable[[int], Runner], library: SampleLibrary, scenario: str, mode: str,
        settings: Settings, folder: str, seconds_per_batch: Optional[float] = None) -> Dict[str, Any]:
    """One LoadGen test; its logs land in `folder`. Returns LoadGen's records and the SUT's timings.
    `seconds_per_batch`: the estimate LoadGen plans by; measured in a warm-up when not given."""
    if scenario not in SCENARIOS or mode not in MODES:
        raise EdgekitError("LoadGen runs scenarios {} in modes {}, not {} {}".format(
            ", ".join(SCENARIOS), ", ".join(MODES), scenario, mode))
    if mode == "accuracy" and library.labels is None:
        raise EdgekitError("an accuracy run scores the eval set: pass --eval eval.npz")
    lg = loadgen_module()
    batch = {"single_stream": 1, "multi_stream": MULTI_STREAM_SAMPLES}.get(scenario, settings.batch)
    spec = runner_for(batch).input_specs()[0]
    runner_for(batch).check_feed({spec.name: library.gather([0], batch)})  # a mismatch fails here, not in LoadGen
    sut_impl = SystemUnderTest(lg, runner_for, library, batch)
    seconds = seconds_per_batch or _estimate_seconds(sut_impl, settings.warmup, typical=scenario == "offline")
    os.makedirs(folder, exist_ok=True)
    sut = lg.ConstructSUT(sut_impl.issue, sut_impl.flush)
    performance_samples = min(len(library), settings.performance_samples)
    qsl = lg.ConstructQSL(len(library), performance_samples, library.load, library.unload)
    started = time.perf_counter()
    try:
        # A nonexistent audit file: an audit.config in the working folder would silently override the settings.
        lg.StartTestWithLogSettings(sut, qsl, test_settings(lg, scenario, mode, settings, seconds),
                                    log_settings(lg, folder), os.path.join(folder, "no-audit.config"))
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    mlperf_logs.drop_empty_trace(folder)
    if sut_impl.error is not None:
        raise sut_impl.error
    records = mlperf_logs.read_detail(folder)
    return {"records": records, "sut": sut_impl.records, "batch": batch, "expected_ms": round(seconds * 1000, 4),
            "seconds": round(time.perf_counter() - started, 3), "folder": folder}


class RunnerCache(object):
    """One active runner per model file: one for a model, or one per batch for a `{batch}` pattern
    (static DLA engines). `make(path)` builds a runner (cheap); all are closed at the end."""

    def __init__(self, model_path: str, make: Callable[[str], Runner]) -> None:
        self.model_path = model_path
        self.make = make
        self.open: Dict[str, Runner] = {}

    def path(self, batch: int) -> str:
        return self.model_path.replace(BATCH_PLACEHOLDER, str(batch))

    def __call__(self, batch: int) -> Runner:
        path = self.path(batch)
        if path not in self.open:
            if BATCH_PLACEHOLDER in self.model_path and not os.path.exists(path):
                raise EdgekitError("{} names one engine per batch, but {} (batch {}) does not exist: build it with "
                                   "edgekit build-engine --batch {}".format(self.model_path, path, batch, batch))
            self.open[path] = self.make(path).activate()
        return self.open[path]

    def close(self) -> None:
        for runner in self.open.values():
            runner.deactivate()
        self.open.clear()


def performance_record(scenario: str, outcome: Dict[str, Any]) -> Dict[str, Any]:
    """A performance run in the shape `edgekit bench` records its own scenarios, plus LoadGen's verdict."""
    records, batch = outcome["records"], outcome["batch"]
    folder = outcome["folder"]
    found = dict(mlperf_logs.verdict(folder, records), scenario=scenario, harness="loadgen", batch=batch,
                 early_stopping=mlperf_logs.early_stopping(records, scenario), expected_ms=outcome["expected_ms"],
                 logs=mlperf_logs.log_files(folder), wall_seconds=outcome["seconds"])
    inferences = [r["end_to_end"] for r in outcome["sut"] if "end_to_end" in r]
    if scenario == "offline":
        throughput = records.get("result_samples_per_second")
        row = {"batch": batch, "queries": len(inferences), "seconds": round(sum(inferences), 4),
               "throughput": round(float(throughput), 3) if throughput is not None else None,
               "latency": latency_stats(inferences), "samples": records.get("effective_samples_per_query")}
        found.update(rows=[row], best_batch=batch, best_throughput=row["throughput"],
                     sample_latency=mlperf_logs.sample_latency(records))
        return found
    latency = mlperf_logs.sample_latency(records, per_query=scenario == "multi_stream")
    qps = records.get("result_qps_with_loadgen_overhead")
    found.update(queries=records.get("result_query_count"), latency=latency,
                 qps=round(float(qps), 3) if qps is not None else None,
                 qps_without_loadgen_overhead=records.get("result_qps_without_loadgen_overhead"),
                 inference=latency_stats(inferences))
    return found


def measured_seconds(scenario: str, outcome: Dict[str, Any]) -> Optional[float]:
    """Seconds a batch took in a finished run, as LoadGen measured it: what its next plan should assume."""
    records = outcome["records"]
    if scenario == "offline":
        throughput = records.get("result_samples_per_second")
        return outcome["batch"] / float(throughput) if throughput else None
    fastest = records.get("result_min_latency_ns")
    return float(fastest) / 1e9 if fastest else None


def performance_run(cache: RunnerCache, library: SampleLibrary, scenario: str, settings: Settings, folder: str,
                    log: Callable[[str], None]) -> Dict[str, Any]:
    """A PerformanceOnly run, planned by a warm-up's estimate. When the run was faster than the warm-up said,
    LoadGen ran out of the queries it planned before min_duration and calls the run INVALID; it is then run
    again, planned by what LoadGen itself measured (what LoadGen's summary advises), and says so. A short
    first run can measure slow too, so each replan assumes twice the speed of the one before, up to
    `REPLANS` times: a faster plan only makes LoadGen plan more than it issues (Offline: a longer query)."""
    outcome = run(cache, library, scenario, "performance", settings, folder)
    found = performance_record(scenario, outcome)
    first = {"expected_ms": outcome["expected_ms"], "invalid_reason": found["invalid_reason"]}
    for replan in range(REPLANS):
        measured = measured_seconds(scenario, outcome)
        if found["validity"] == "VALID" or found.get("min_duration_met") is not False or not measured:
            break
        planned = measured / 2 ** replan
        log("LoadGen {}: {} ms a batch planned, {:.4f} ms measured, so min_duration was not met; running it again "
            "planned at {:.4f} ms".format(LOADGEN_NAMES[scenario], outcome["expected_ms"], measured * 1000,
                                          planned * 1000))
        outcome = run(cache, library, scenario, "performance", settings, folder, seconds_per_batch=planned)
        found = dict(performance_record(scenario, outcome), replanned=dict(first, replans=replan + 1))
    return found


def loadgen_version() -> Optional[str]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python 3.8 has importlib.metadata
        return None
    try:
        return version("mlcommons-loadgen")
    except PackageNotFoundError:
        return None


def names_for(labels: Dict[str, Optional[str]], runtime: Dict[str, Any], precision: str) -> Dict[str, str]:
    """The system and model folder names of the log tree: the system is where it ran (target, placement,
    runtime), the model what ran (recipe, variant, precision)."""
    system = "{}_{}_{}-{}".format(labels.get("target") or "local", labels.get("placement") or "cpu",
                                  runtime.get("runtime", runtime.get("runner", "runner")),
                                  runtime.get("runtime_version", ""))
    model = "{}-{}-{}".format(labels.get("recipe") or "model", labels.get("variant") or "student", precision)
    return {"system": mlperf_logs.slug(system.rstrip("-")), "model": mlperf_logs.slug(model)}


def accuracy_run(cache: RunnerCache, library: SampleLibrary, scenario: str, settings: Settings,
                 folder: str) -> Dict[str, Any]:
    """AccuracyOnly: every eval image once; top-1 from LoadGen's accuracy log (accuracy.txt beside it)."""
    run(cache, library, scenario, "accuracy", settings, folder)
    assert library.labels is not None
    measured = mlperf_logs.accuracy_top1(folder, library.labels)
    measured["accuracy_txt"] = mlperf_logs.write_accuracy_txt(folder, measured)
    measured["logs"] = mlperf_logs.log_files(folder)
    return measured


def overall_validity(performance: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """VALID when every performance run was; None when there was none (accuracy only)."""
    verdicts = [p["validity"] for p in performance.values()]
    if not verdicts:
        return None
    return "VALID" if all(v == "VALID" for v in verdicts) else "INVALID"


def _labels(model_path: str, runtime: str, given: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
    name = os.path.basename(model_path)
    placement = given.get("placement") or next((p for p in name.split(".") if p in ("dla0", "dla1")),
                                               "gpu" if runtime == "tensorrt" else "cpu")
    return {"variant": given.get("variant") or ("student" if name.startswith("model.") else name.split(".")[0]),
            "target": given.get("target") or "local", "placement": placement, "recipe": given.get("recipe")}


def _describe(scenario: str, found: Dict[str, Any]) -> str:
    if scenario == "offline":
        return "LoadGen Offline: {} samples/s at batch {} ({})".format(found["best_throughput"], found["batch"],
                                                                       found["validity"])
    latency = found["latency"]
    key = "p99_ms" if scenario == "multi_stream" else "p90_ms"
    return "LoadGen {}: {} {} ms over {} queries ({}{})".format(
        LOADGEN_NAMES[scenario], key[:-3], latency[key], found["queries"], found["validity"],
        "" if found["validity"] == "VALID" else ": " + str(found.get("invalid_reason")))


def run_scenarios(cache: RunnerCache, library: SampleLibrary, scenarios: Sequence[str], modes: Sequence[str],
                  settings: Settings, root: str, names: Dict[str, str],
                  log: Callable[[str], None]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Each scenario's performance run, then its accuracy run: {"performance": {...}, "accuracy": {...}}."""
    found: Dict[str, Dict[str, Dict[str, Any]]] = {"performance": {}, "accuracy": {}}
    for scenario in scenarios:
        if "performance" in modes:
            folder = mlperf_logs.run_folder(root, names["system"], names["model"], scenario, "performance")
            found["performance"][scenario] = performance_run(cache, library, scenario, settings, folder, log)
            log(_describe(scenario, found["performance"][scenario]))
        if "accuracy" in modes:
            folder = mlperf_logs.run_folder(root, names["system"], names["model"], scenario, "accuracy")
            measured = found["accuracy"][scenario] = accuracy_run(cache, library, scenario, settings, folder)
            log("LoadGen {} AccuracyOnly: top-1 {:.2f}% on {} images (from {})".format(
                LOADGEN_NAMES[scenario], measured["top1"], measured["images"], mlperf_logs.ACCURACY_LOG))
    return found


def _library(runner: Runner, evaluation: Optional[Any], eval_set: Optional[str], batch: int) -> SampleLibrary:
    from .accuracy import feeding

    spec = runner.input_specs()[0]
    if evaluation is None:
        return SampleLibrary.synthetic(spec)
    feeding(runner, evaluation[0], batch)  # the eval images fit the model, or one clear error
    return SampleLibrary(evaluation[0].astype(spec.dtype), evaluation[1], str(eval_set))


def loadgen_section(root: str, names: Dict[str, str], system_file: str, modes: Sequence[str], settings: Settings,
                    library: SampleLibrary, found: Dict[str, Dict[str, Dict[str, Any]]],
                    own: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The result's `loadgen` record: the verdict, the logs, the settings, each accuracy run beside the
    runner's own top-1 on the same images."""
    accuracy_runs = found["accuracy"]
    return {
        "version": loadgen_version(), "logs": root, "system": names["system"], "model": names["model"],
        "system_description": system_file, "modes": list(modes), "settings": settings._asdict(),
        "samples": {"count": len(library), "source": library.source},
        "submission_minimums": mlperf_logs.SUBMISSION_MINIMUMS, "validity": overall_validity(found["performance"]),
        "accuracy": accuracy_runs, "runner_top1": own["top1"] if own else None,
        "accuracy_agrees": (all(a["top1"] == own["top1"] for a in accuracy_runs.values())
                            if own and accuracy_runs else None),
    }


# What a LoadGen result says of what it does not measure (edgekit's own harness samples power and thermals).
UNSAMPLED = {"harness": "loadgen", "power_source": None, "throttled": None,
             "power_unavailable_reasons": ["not sampled under LoadGen (edgekit bench's own harness samples power)"]}


def check_request(scenarios: Sequence[str], modes: Optional[Sequence[str]], settings: Settings) -> None:
    unknown = [s for s in scenarios if s not in SCENARIOS] + [m for m in (modes or ()) if m not in MODES]
    if unknown:
        raise EdgekitError("unknown scenario or mode {}; choose scenarios {} and modes {}".format(
            ", ".join(unknown), ", ".join(SCENARIOS), ", ".join(MODES)))
    if settings.batch < 1:
        raise EdgekitError("the Offline batch must be positive, got {}".format(settings.batch))


def benchmark_loadgen(model_path: str, out_path: Optional[str] = None, runner: str = "auto",
                      threads: Optional[int] = None, scenarios: Sequence[str] = ("single_stream", "offline"),
                      modes: Optional[Sequence[str]] = None, settings: Optional[Settings] = None,
                      eval_set: Optional[str] = None, accuracy: Optional[Dict[str, Any]] = None,
                      logs_root: Optional[str] = None, precision: Optional[str] = None,
                      labels: Optional[Dict[str, Optional[str]]] = None, cuda_graph: bool = False,
                      spin_wait: bool = False, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """LoadGen's scenarios and modes on one model; the MLPerf logs under `logs_root` (default: beside
    `out_path`, <stem>.mlperf/); the result JSON (if `out_path`) in `edgekit bench`'s schema."""
    from ...artifacts import sha256_file
    from ..layout import new_run_id, precision_of
    from . import environment
    from .accuracy import load_eval_set, merge, score
    from .harness import choose_runner, make_runner
    from .results import save_result

    settings = settings or Settings()
    check_request(scenarios, modes, settings)
    modes = list(modes or (("performance", "accuracy") if eval_set else ("performance",)))
    loadgen_module()  # a missing LoadGen fails before anything is opened
    evaluation = load_eval_set(eval_set) if eval_set else None
    first_batch = 1 if "single_stream" in scenarios else (MULTI_STREAM_SAMPLES if "multi_stream" in scenarios
                                                           else settings.batch)
    cache = RunnerCache(model_path, lambda path: make_runner(path, runner, threads, cuda_graph, spin_wait))
    runtime_name, run_path, why = choose_runner(cache.path(first_batch), runner)
    log("runner: {} ({}); harness: MLPerf LoadGen {}".format(runtime_name, why, loadgen_version() or ""))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    precision = precision or precision_of(model_path) or "unknown"
    root = logs_root or (mlperf_logs_path(out_path) if out_path else "mlperf")
    own = None
    try:
        info = cache(first_batch).runtime_info()
        spec = cache(first_batch).input_specs()[0]
        library = _library(cache(first_batch), evaluation, eval_set, first_batch)
        found_labels = _labels(model_path, runtime_name, labels or {})
        env = environment.collect(threads=threads, runtime=info, precision=precision)
        names = names_for(found_labels, info, precision)
        system_file = mlperf_logs.write_system(root, names["system"], mlperf_logs.system_description(
            names["system"], env, info, found_labels["placement"]))
        found = run_scenarios(cache, library, scenarios, modes, settings, root, names, log)
        if evaluation is not None:
            eval_batch = settings.batch if BATCH_PLACEHOLDER not in model_path else first_batch
            own = score(cache(eval_batch), evaluation[0], evaluation[1], batch=eval_batch)
            accuracy = merge(accuracy, own, info.get("runtime", info["runner"]))
            log("top-1 scored by this runner outside LoadGen: {:.2f}% on {} images".format(own["top1"], own["images"]))
    finally:
        cache.close()
    result = dict(
        run_id=new_run_id(), created=started, accuracy=accuracy, labels=found_labels, runtime=info, environment=env,
        model={"path": model_path, "ran": run_path, "sha256": sha256_file(run_path), "precision": precision,
               "inputs": [repr(spec)]},
        loadgen=loadgen_section(root, names, system_file, modes, settings, library, found, own),
        scenarios=found["performance"], settings=dict(settings._asdict(), scenarios=list(scenarios), modes=modes),
        **UNSAMPLED)
    if out_path:
        save_result(out_path, result)
        log("wrote {} (MLPerf logs under {})".format(out_path, root))
    return result
