"""The results store: every result JSON under benchmarks/results/, validated and indexed in SQLite.

The JSON files stay the source of truth. `build_index` reads them all (a bad file is reported and
skipped, never fatal) and writes `index.sqlite` from scratch into a temporary file that replaces
the old index in one rename, so the index can be deleted or rebuilt at any time and a reader
never sees half of one. Python 3.8 clean, stdlib only: it runs wherever results are.
"""

import datetime
import glob
import json
import os
import pathlib
import sqlite3
import statistics
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..device.bench.results import TOP1_CHECK_TOLERANCE_POINTS, load_result, result_rows
from ..device.jobs import load_error
from ..device.layout import HANDOFF_DIR, MLPERF_LOGS_SUFFIX, is_error_file
from ..errors import EdgekitError

INDEX_NAME = "index.sqlite"
INDEX_VERSION = 2
# What identifies "the same thing measured again": the regression check compares along it.
SERIES = ("target", "recipe", "variant", "precision", "placement", "runner", "harness")

RUN_COLUMNS = [
    ("run_id", "TEXT PRIMARY KEY"), ("file", "TEXT"), ("created", "TEXT"), ("target", "TEXT"),
    ("recipe", "TEXT"), ("variant", "TEXT"), ("precision", "TEXT"), ("placement", "TEXT"), ("runner", "TEXT"),
    ("runtime_version", "TEXT"), ("model", "TEXT"), ("device", "TEXT"), ("power_mode", "TEXT"),
    ("power_source", "TEXT"), ("top1", "REAL"), ("top1_source", "TEXT"), ("top1_check", "REAL"),
    ("top1_check_delta", "REAL"), ("macs", "REAL"), ("params", "REAL"), ("p50_ms", "REAL"),
    ("p90_ms", "REAL"), ("p95_ms", "REAL"), ("p99_ms", "REAL"), ("max_ms", "REAL"), ("mean_ms", "REAL"),
    ("qps", "REAL"), ("best_batch", "INTEGER"), ("best_throughput", "REAL"),
    ("best_throughput_low", "REAL"),  # img/s at the best batch's p90 latency: 9 in 10 of its batches ran faster
    ("total_w", "REAL"),
    ("idle_w", "REAL"), ("mj_per_inference", "REAL"), ("inferences_per_joule", "REAL"), ("power_status", "TEXT"),
    ("throttled", "INTEGER"),  # a measured window's clocks dropped or a zone reached a trip point (1), none (0)
    ("environment", "TEXT"),
    # edgekit's own timing loop or MLPerf LoadGen; LoadGen's verdict and where its logs are
    ("harness", "TEXT"), ("loadgen_validity", "TEXT"), ("loadgen_logs", "TEXT"),
]
# A device job that failed (results/<stem>.error.json, fetched by deploy): what and why.
FAILURE_COLUMNS = [
    ("run_id", "TEXT PRIMARY KEY"), ("file", "TEXT"), ("created", "TEXT"), ("target", "TEXT"), ("recipe", "TEXT"),
    ("variant", "TEXT"), ("precision", "TEXT"), ("placement", "TEXT"), ("stage", "TEXT"), ("message", "TEXT"),
    ("command", "TEXT"), ("exit_code", "INTEGER"),
]
MEASUREMENT_COLUMNS = [
    ("run_id", "TEXT"), ("scenario", "TEXT"), ("batch", "INTEGER"), ("queries", "INTEGER"), ("p50_ms", "REAL"),
    ("p90_ms", "REAL"), ("p95_ms", "REAL"), ("p99_ms", "REAL"), ("max_ms", "REAL"), ("mean_ms", "REAL"),
    ("throughput", "REAL"), ("total_w", "REAL"), ("mj_per_inference", "REAL"), ("inferences_per_joule", "REAL"),
]


def _scalar(value: Any) -> Any:
    """What SQLite stores: numbers and text as they are, anything else as its JSON text."""
    if value is None or isinstance(value, (int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _first_power(result: Dict[str, Any]) -> Dict[str, Any]:
    """The single-stream window's power, else the best offline batch's: what a run costs."""
    scenarios = result.get("scenarios", {})
    ss = scenarios.get("single_stream") or {}
    if (ss.get("power") or {}).get("status") == "ok":
        return ss["power"]
    off = scenarios.get("offline") or {}
    rows = [r for r in off.get("rows", []) if (r.get("power") or {}).get("status") == "ok"]
    best = [r for r in rows if r.get("batch") == off.get("best_batch")] or rows
    if best:
        return best[0]["power"]
    return ss.get("power") or {}


def _throughput_low(offline: Dict[str, Any]) -> Optional[float]:
    """The best batch's throughput if every batch took its p90 latency: the slow end of its own spread."""
    row = next((r for r in offline.get("rows", []) if r.get("batch") == offline.get("best_batch")), None)
    p90 = ((row or {}).get("latency") or {}).get("p90_ms")
    return row["batch"] * 1000.0 / p90 if row and p90 else None


def power_mode(result: Dict[str, Any]) -> Optional[str]:
    env = result.get("environment") or {}
    mode = env.get("nvpmodel")
    if isinstance(mode, dict) and mode.get("name"):
        return "{} ({})".format(mode["name"], mode.get("id")) if mode.get("id") else str(mode["name"])
    state = result.get("device_state") or {}
    return _text(state.get("nvpmodel")) or None


def flatten(result: Dict[str, Any], file: str, folder_target: Optional[str] = None) -> Dict[str, Any]:
    """One row per run: what the runs table, filters and charts need."""
    labels = result.get("labels") or {}
    accuracy = result.get("accuracy") or {}
    runtime = result.get("runtime") or {}
    env = result.get("environment") or {}
    model = result.get("model") or {}
    scenarios = result.get("scenarios") or {}
    ss = scenarios.get("single_stream") or {}
    latency = ss.get("latency") or {}
    off = scenarios.get("offline") or {}
    if not isinstance(accuracy, dict) or not isinstance(labels, dict):
        raise TypeError("accuracy and labels must be objects")
    check = accuracy.get("device_check") or {}  # this runner's own top-1 on the host's eval images
    if not isinstance(check, dict):
        raise TypeError("accuracy.device_check must be an object")
    power = _first_power(result)
    target = labels.get("target")
    if not target or target == "local":
        target = folder_target or target or "local"
    name = os.path.basename(str(model.get("path", "")))
    return {
        "run_id": result["run_id"], "file": file, "created": result.get("created"), "target": target,
        "recipe": labels.get("recipe") or accuracy.get("dataset") or "",
        "variant": labels.get("variant") or ("student" if name.startswith("model.") else name.split(".")[0]),
        "precision": model.get("precision") or "unknown",
        "placement": labels.get("placement") or ("gpu" if runtime.get("runner") == "tensorrt" else "cpu"),
        "runner": runtime.get("runner") or "", "runtime_version": _text(runtime.get("runtime_version")),
        "model": str(model.get("path", "")), "device": _text(env.get("device_model") or env.get("cpu")),
        "power_mode": power_mode(result), "power_source": _text(result.get("power_source")),
        "top1": accuracy.get("top1"), "top1_source": _text(accuracy.get("measured_on")),
        "top1_check": check.get("top1"), "top1_check_delta": check.get("delta_points"),
        "macs": accuracy.get("macs"), "params": accuracy.get("params"),
        "p50_ms": latency.get("p50_ms"), "p90_ms": latency.get("p90_ms"), "p95_ms": latency.get("p95_ms"),
        "p99_ms": latency.get("p99_ms"), "max_ms": latency.get("max_ms"), "mean_ms": latency.get("mean_ms"),
        "qps": ss.get("qps"), "best_batch": off.get("best_batch"), "best_throughput": off.get("best_throughput"),
        "best_throughput_low": _throughput_low(off),
        "total_w": power.get("total_w"), "idle_w": power.get("idle_w"),
        "mj_per_inference": power.get("mj_per_inference"),
        "inferences_per_joule": power.get("inferences_per_joule"),
        "power_status": power.get("status") or ("unavailable" if not result.get("power_source") else None),
        "throttled": {True: 1, False: 0}.get(result.get("throttled")),  # type: ignore[arg-type]
        "environment": json.dumps(env, sort_keys=True, default=str),
        "harness": result.get("harness") or "edgekit",
        "loadgen_validity": (result.get("loadgen") or {}).get("validity"),
        "loadgen_logs": (result.get("loadgen") or {}).get("logs"),
    }


def scan(results_root: str) -> Tuple[List[Tuple[str, Dict[str, Any]]], List[Dict[str, str]]]:
    """Every result file under `results_root`: ([(relative path, result)], [{file, reason}])."""
    found: List[Tuple[str, Dict[str, Any]]] = []
    problems: List[Dict[str, str]] = []
    seen: Dict[str, str] = {}
    paths = sorted(glob.glob(os.path.join(results_root, "**", "*.json"), recursive=True))
    for path in paths:
        rel = os.path.relpath(path, results_root)
        if any(part.startswith(".") for part in rel.split(os.sep)):
            continue  # staging folders of a fetch in progress
        if any(part.endswith(MLPERF_LOGS_SUFFIX) or part == HANDOFF_DIR for part in rel.split(os.sep)[:-1]):
            continue  # a LoadGen run's MLPerf log tree beside its result, or a hand-off package
        if is_error_file(rel):
            continue  # a failed job's error file: scan_failures reads those
        try:
            result = load_result(path)
        except EdgekitError as exc:
            problems.append({"file": rel, "reason": str(exc).replace(path, "").strip(" :") or str(exc)})
            continue
        if result["run_id"] in seen:
            problems.append({"file": rel, "reason": "same run_id as {}; skipped".format(seen[result["run_id"]])})
            continue
        seen[result["run_id"]] = rel
        found.append((rel, result))
    return found, problems


def failure_row(error: Dict[str, Any], file: str, folder_target: Optional[str] = None) -> Dict[str, Any]:
    labels = error.get("labels") or {}
    command = error.get("command")
    return {
        "run_id": error["run_id"], "file": file, "created": error.get("created"),
        "target": labels.get("target") or folder_target or "local", "recipe": labels.get("recipe") or "",
        "variant": labels.get("variant"), "precision": labels.get("precision"), "placement": labels.get("placement"),
        "stage": error.get("stage"), "message": error.get("message"),
        "command": " ".join(str(c) for c in command) if isinstance(command, list) else _text(command),
        "exit_code": error.get("exit_code") if isinstance(error.get("exit_code"), int) else None,
    }


def scan_failures(results_root: str) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """Every failed job's error file under `results_root`: ([failure rows], [{file, reason}])."""
    failures: List[Dict[str, Any]] = []
    problems: List[Dict[str, str]] = []
    for path in sorted(glob.glob(os.path.join(results_root, "**", "*.json"), recursive=True)):
        rel = os.path.relpath(path, results_root)
        if not is_error_file(rel) or any(part.startswith(".") for part in rel.split(os.sep)):
            continue
        try:
            failures.append(failure_row(load_error(path), rel, _folder_target(rel)))
        except EdgekitError as exc:
            problems.append({"file": rel, "reason": str(exc).replace(path, "").strip(" :") or str(exc)})
    return failures, problems


def query_failures(db_path: str, target: Optional[str] = None, variant: Optional[str] = None,
                   precision: Optional[str] = None, recipe: Optional[str] = None) -> List[Dict[str, Any]]:
    """Failed device jobs from the index, oldest first, filtered like `query_runs`."""
    where, args = [], []
    for column, value in (("target", target), ("variant", variant), ("precision", precision), ("recipe", recipe)):
        if value:
            where.append("{} = ?".format(column))
            args.append(value)
    con = sqlite3.connect(pathlib.Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        sql = "SELECT * FROM failures{} ORDER BY created, run_id".format(
            " WHERE " + " AND ".join(where) if where else "")
        return [dict(row) for row in con.execute(sql, args)]
    finally:
        con.close()


def format_failures(failures: Iterable[Dict[str, Any]]) -> str:
    return "\n".join("FAILED {} {} {}.{}.{} at {} ({}): {}".format(
        _cell(f.get("created")), f.get("target"), f.get("variant"), f.get("precision"), f.get("placement"),
        f.get("stage"), f.get("run_id"), f.get("message")) for f in failures)


def _folder_target(rel: str) -> Optional[str]:
    parts = rel.split(os.sep)
    return parts[0] if len(parts) > 1 else None


def build_index(results_root: str, db_path: Optional[str] = None) -> Dict[str, Any]:
    """(Re)build the SQLite index from the JSON files; return {runs, problems, path, results by run id}."""
    db_path = db_path or os.path.join(results_root, INDEX_NAME)
    if not os.path.isdir(results_root):
        raise EdgekitError("no results folder {}: run make deploy (or edgekit bench --out) first".format(
            results_root))
    scanned, problems = scan(results_root)
    failures, unreadable = scan_failures(results_root)
    problems += unreadable
    found, runs, measured = [], [], []
    for rel, result in scanned:
        try:  # the schema check covers what is read below; anything it missed skips one file, not all
            run = {k: _scalar(v) for k, v in flatten(result, rel, _folder_target(rel)).items()}
            rows = [{k: _scalar(v) if k != "rails_w" else v for k, v in row.items()}
                    for row in measurement_rows(result)]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            problems.append({"file": rel, "reason": "unreadable field ({}: {})".format(type(exc).__name__, exc)})
            continue
        found.append((rel, result))
        runs.append(run)
        measured.append(rows)
    folder = os.path.dirname(os.path.abspath(db_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".sqlite", dir=folder)
    os.close(fd)
    os.unlink(tmp)  # sqlite creates it afresh, with the umask's mode (mkstemp's is 0600)
    try:
        con = sqlite3.connect(tmp)
        with con:
            con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            con.execute("CREATE TABLE runs ({})".format(", ".join("{} {}".format(n, t) for n, t in RUN_COLUMNS)))
            con.execute("CREATE TABLE measurements ({})".format(
                ", ".join("{} {}".format(n, t) for n, t in MEASUREMENT_COLUMNS)))
            con.execute("CREATE TABLE rails (run_id TEXT, scenario TEXT, batch INTEGER, rail TEXT, watts REAL)")
            con.execute("CREATE TABLE problems (file TEXT, reason TEXT)")
            con.execute("CREATE TABLE failures ({})".format(
                ", ".join("{} {}".format(n, t) for n, t in FAILURE_COLUMNS)))
            fnames = [n for n, _ in FAILURE_COLUMNS]
            con.executemany("INSERT OR REPLACE INTO failures VALUES ({})".format(", ".join("?" * len(fnames))),
                            [[f[n] for n in fnames] for f in failures])
            con.execute("CREATE INDEX runs_series ON runs ({}, created)".format(", ".join(SERIES)))
            con.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("index_version", str(INDEX_VERSION)), ("results_root", os.path.abspath(results_root)),
                ("built_at", datetime.datetime.now().isoformat(timespec="seconds"))])
            names = [n for n, _ in RUN_COLUMNS]
            con.executemany("INSERT INTO runs VALUES ({})".format(", ".join("?" * len(names))),
                            [[run[n] for n in names] for run in runs])
            mnames = [n for n, _ in MEASUREMENT_COLUMNS]
            for run, rows in zip(runs, measured):
                for row in rows:
                    con.execute("INSERT INTO measurements VALUES ({})".format(", ".join("?" * len(mnames))),
                                [row.get(n) for n in mnames])
                    rails = row.get("rails_w") if isinstance(row.get("rails_w"), dict) else {}
                    for rail, watts in sorted(rails.items()):
                        con.execute("INSERT INTO rails VALUES (?, ?, ?, ?, ?)",
                                    (run["run_id"], row["scenario"], row["batch"], str(rail), _scalar(watts)))
            con.executemany("INSERT INTO problems VALUES (?, ?)", [(p["file"], p["reason"]) for p in problems])
        con.close()
        os.replace(tmp, db_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"runs": runs, "problems": problems, "path": db_path, "results": dict((r["run_id"], r) for _, r in found),
            "failures": failures}


def measurement_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """`result_rows` plus p95, inferences per joule and the rails of each measured window."""
    rows = result_rows(result)
    scenarios = result.get("scenarios", {})
    windows = []
    windows += [scenarios[name] for name in ("single_stream", "multi_stream") if scenarios.get(name)]
    windows += list((scenarios.get("offline") or {}).get("rows", []))
    for row, window in zip(rows, windows):
        power = window.get("power") or {}
        row["p95_ms"] = (window.get("latency") or {}).get("p95_ms")
        row["inferences_per_joule"] = power.get("inferences_per_joule")
        row["rails_w"] = power.get("rails_w") if power.get("status") == "ok" else None
    return rows


def query_runs(db_path: str, target: Optional[str] = None, variant: Optional[str] = None,
               precision: Optional[str] = None, recipe: Optional[str] = None, since: Optional[str] = None,
               until: Optional[str] = None) -> List[Dict[str, Any]]:
    """Runs from the index, oldest first, filtered by exact labels and an ISO date range."""
    where, args = [], []
    for column, value in (("target", target), ("variant", variant), ("precision", precision), ("recipe", recipe)):
        if value:
            where.append("{} = ?".format(column))
            args.append(value)
    if since:
        where.append("substr(created, 1, 10) >= ?")
        args.append(_date(since, "--since"))
    if until:
        where.append("substr(created, 1, 10) <= ?")
        args.append(_date(until, "--until"))
    con = sqlite3.connect(pathlib.Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        sql = "SELECT * FROM runs{} ORDER BY created, run_id".format(" WHERE " + " AND ".join(where) if where else "")
        return [dict(row) for row in con.execute(sql, args)]
    finally:
        con.close()


def _date(text: str, flag: str) -> str:
    try:
        return datetime.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise EdgekitError("{} expects a date like 2026-11-25, got {!r}".format(flag, text)) from None


# Metric -> which direction is better. The A/B comparison shows them all.
METRICS = (("top1", "higher", "top-1 %"), ("p50_ms", "lower", "p50 ms"), ("p99_ms", "lower", "p99 ms"),
           ("best_throughput", "higher", "best img/s"), ("mj_per_inference", "lower", "mJ/inference"),
           ("total_w", "lower", "W"))
# The regression check leaves p99 and watts out: a 1-3 s window's p99 rests on a handful of queries,
# and the board's draw follows the work done; energy per inference is the power metric that counts.
REGRESSION_METRICS = ("top1", "p50_ms", "best_throughput", "mj_per_inference")


def worse_by(metric: str, before: Optional[float], after: Optional[float]) -> Optional[float]:
    """How much worse `after` is than `before` as a fraction (negative: better); None if unknown."""
    if before is None or after is None or before == 0:
        return None
    direction = dict((m, d) for m, d, _ in METRICS)[metric]
    if metric == "top1":
        return (before - after) / 100.0  # accuracy points, as a fraction
    change = (after - before) / abs(before)
    return change if direction == "lower" else -change


# A metric and the field of the same run that bounds its own jitter: a slower p50 counts only beyond the
# previous runs' p90, a lower best throughput only below what their best batch gave at its p90 latency.
SPREAD = {"p50_ms": "p90_ms", "best_throughput": "best_throughput_low"}
# The spread is the median over this many previous runs of the series: one lucky (quiet) run on a shared
# machine would otherwise make its ordinary successor look like a regression.
SPREAD_RUNS = 3


def within_spread(metric: str, history: Sequence[Dict[str, Any]], after: Dict[str, Any]) -> bool:
    """Whether `after` lies inside the spread the previous runs measured in their own windows (so: jitter)."""
    bounds = [run[SPREAD[metric]] for run in history[-SPREAD_RUNS:] if run.get(SPREAD.get(metric, "")) is not None]
    value = after.get(metric)
    if not bounds or value is None:
        return False
    bound = statistics.median(bounds)
    return value <= bound if dict((m, d) for m, d, _ in METRICS)[metric] == "lower" else value >= bound


def regressions(runs: Sequence[Dict[str, Any]], threshold: float = 0.10,
                top1_points: float = 0.5) -> List[Dict[str, Any]]:
    """Each run compared with the previous run of the same series; a metric worse than `threshold`
    (a fraction; top-1 in points: `top1_points`) is flagged. A slower p50 must also lie beyond the
    previous runs' p90 (slower than 90% of their queries), and a lower best throughput below the
    previous best batches' throughput at their p90 latency, each the median over the last
    `SPREAD_RUNS` runs: run-to-run jitter on a shared CPU reaches 30% of the median, a real slowdown
    moves the whole distribution and stays. A run whose engine scored the eval images more than
    `TOP1_CHECK_TOLERANCE_POINTS` below the host is flagged as `top1_vs_host`."""
    flagged: List[Dict[str, Any]] = []
    previous: Dict[Tuple[Any, ...], List[Dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: (r.get("created") or "", r["run_id"])):
        delta = run.get("top1_check_delta")
        if delta is not None and run.get("top1_check") is not None and delta < -TOP1_CHECK_TOLERANCE_POINTS:
            flagged.append({"run_id": run["run_id"], "previous": "host", "metric": "top1_vs_host",
                            "label": "top-1 vs host", "before": round(run["top1_check"] - delta, 3),
                            "after": run["top1_check"], "change": round(-delta / 100.0, 4)})
        history = previous.setdefault(tuple(run.get(k) for k in SERIES), [])
        if history:
            flagged += _worse_than(history, run, threshold, top1_points)
        history.append(run)
    return flagged


def _worse_than(history: Sequence[Dict[str, Any]], run: Dict[str, Any], threshold: float,
                top1_points: float) -> List[Dict[str, Any]]:
    before, flagged = history[-1], []
    for metric, _, label in METRICS:
        if metric not in REGRESSION_METRICS or (metric in SPREAD and within_spread(metric, history, run)):
            continue
        change = worse_by(metric, before.get(metric), run.get(metric))
        limit = top1_points / 100.0 if metric == "top1" else threshold
        if change is not None and change > limit:
            flagged.append({"run_id": run["run_id"], "previous": before["run_id"], "metric": metric,
                            "label": label, "before": before[metric], "after": run[metric],
                            "change": round(change, 4)})
    return flagged


# How each metric is worse, in words: "12.5% slower", "0.80 points lower".
WORSE_WORDS = {"p50_ms": "slower", "p99_ms": "slower", "best_throughput": "lower", "mj_per_inference": "more energy",
               "total_w": "more power", "top1": "lower", "top1_vs_host": "lower"}


def worse_text(flag: Dict[str, Any]) -> str:
    """`12.5% slower` or `0.80 points lower`: a flag's change as a user reads it."""
    words = WORSE_WORDS.get(flag["metric"], "worse")
    if flag["metric"] in ("top1", "top1_vs_host"):
        return "{:.2f} points {}".format(flag["change"] * 100, words)
    return "{:.1f}% {}".format(flag["change"] * 100, words)


TABLE_COLUMNS = ("created", "target", "recipe", "variant", "precision", "placement", "runner", "top1", "p50_ms",
                 "p99_ms", "best_throughput", "total_w", "mj_per_inference", "loadgen_validity", "power_mode",
                 "throttled", "run_id")


def format_table(runs: Iterable[Dict[str, Any]], flagged: Sequence[Dict[str, Any]] = ()) -> str:
    marks: Dict[str, List[str]] = {}
    for f in flagged:
        marks.setdefault(f["run_id"], []).append(f["label"])
    rows = [[_cell(run.get(c)) for c in TABLE_COLUMNS] + [", ".join(marks.get(run["run_id"], []))] for run in runs]
    header = list(TABLE_COLUMNS) + ["regressed"]
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "{:.3f}".format(value) if abs(value) < 1000 else "{:.1f}".format(value)
    text = str(value)
    return text[:19] if len(text) > 24 and text[:4].isdigit() and "T" in text[:11] else text
