"""Benchmark results: versioned JSON, one file per run, written atomically; CSV export."""

import csv
import io
from typing import Any, Dict, List

from ...artifacts import read_json, write_json_atomic, write_text_atomic
from ...errors import EdgekitError

# accuracy.device_check: a run that scored the host's eval images more than this many points of top-1
# below the host's figure for the same model and images is out of tolerance (the store flags it).
TOP1_CHECK_TOLERANCE_POINTS = 1.0

SCHEMA = "edgekit.bench"
SCHEMA_VERSION = 1


def save_result(path: str, result: Dict[str, Any]) -> None:
    result = dict(result, schema=SCHEMA, schema_version=SCHEMA_VERSION)
    write_json_atomic(path, result)


def load_result(path: str) -> Dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EdgekitError("{} is not an edgekit benchmark result".format(path))
    if data.get("schema_version") != SCHEMA_VERSION:
        raise EdgekitError("{} has schema version {}, this edgekit reads {}".format(
            path, data.get("schema_version"), SCHEMA_VERSION))
    problem = schema_problem(data)
    if problem:
        raise EdgekitError("{} does not follow the {} v{} schema: {}".format(path, SCHEMA, SCHEMA_VERSION, problem))
    return data


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def schema_problem(data: Dict[str, Any]) -> str:
    """What is wrong with a result's structure ("" when nothing): the fields readers rely on."""
    if not isinstance(data.get("run_id"), str) or not data["run_id"]:
        return "no run_id"
    if not isinstance(data.get("created"), str):
        return "no created time"
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("path"), str):
        return "no model.path"
    scenarios = data.get("scenarios")
    loadgen = data.get("loadgen")
    if loadgen is not None and (not isinstance(loadgen, dict) or loadgen.get("validity") not in (None, "VALID",
                                                                                                   "INVALID")):
        return "loadgen has no VALID/INVALID verdict"
    accuracy_only = bool(loadgen and loadgen.get("accuracy"))
    if not isinstance(scenarios, dict) or not (scenarios.get("single_stream") or scenarios.get("offline")
                                               or scenarios.get("concurrent_offline")
                                               or scenarios.get("multi_stream") or accuracy_only):
        return "no scenario results"
    latencies = []
    concurrent = scenarios.get("concurrent_offline")
    if concurrent:
        if not isinstance(concurrent, dict) or not _number(concurrent.get("throughput")) or not isinstance(
                concurrent.get("engines"), list) or not concurrent["engines"]:
            return "concurrent_offline has no throughput or engines"
        for engine in concurrent["engines"]:
            if not isinstance(engine, dict) or not all(_number(engine.get(k)) for k in ("queries", "throughput")):
                return "a concurrent_offline engine lacks queries or throughput"
    ss = scenarios.get("single_stream")
    if ss:
        if not isinstance(ss, dict) or not _number(ss.get("batch")) or not _number(ss.get("queries")):
            return "single_stream has no batch or queries"
        latencies.append(("single_stream", ss.get("latency")))
    ms = scenarios.get("multi_stream")
    if ms:
        if not isinstance(ms, dict) or not _number(ms.get("batch")) or not _number(ms.get("queries")):
            return "multi_stream has no batch or queries"
        latencies.append(("multi_stream", ms.get("latency")))
    off = scenarios.get("offline")
    if off:
        if not isinstance(off, dict) or not isinstance(off.get("rows"), list) or not off["rows"]:
            return "offline has no rows"
        for row in off["rows"]:
            if not isinstance(row, dict) or not all(_number(row.get(k)) for k in ("batch", "queries", "throughput")):
                return "an offline row lacks batch, queries or throughput"
            latencies.append(("offline batch {}".format(row["batch"]), row.get("latency")))
    for where, latency in latencies:
        if not isinstance(latency, dict):
            return "{} has no latency".format(where)
        for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"):
            if not _number(latency.get(key)):
                return "{} latency.{} is not a number".format(where, key)
    accuracy = data.get("accuracy")
    metric = accuracy.get("metric", "top1") if isinstance(accuracy, dict) else "top1"  # the task's figure
    if accuracy is not None and (not isinstance(accuracy, dict) or not _number(accuracy.get(metric))):
        return "accuracy.{} is not a number".format(metric)
    for key in ("labels", "environment", "runtime", "power_total", "soak", "profile", "times_file"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return "{} is not an object".format(key)
    if data.get("throttled") not in (None, True, False):
        return "throttled is not true, false or null"
    windows = [ss] if ss else []
    windows += list(off["rows"]) if off else []
    windows += [concurrent] if concurrent else []
    for window in windows:
        thermal = window.get("thermal")
        if thermal is not None and (not isinstance(thermal, dict)
                                    or thermal.get("throttled") not in (None, True, False)):
            return "a window's thermal record has no throttled flag"
    return ""


CSV_COLUMNS = ["run_id", "model", "precision", "runner", "scenario", "batch", "queries", "p50_ms", "p90_ms",
               "p99_ms", "max_ms", "mean_ms", "throughput", "total_w", "mj_per_inference"]


def result_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    model, runtime = result.get("model") or {}, result.get("runtime") or {}
    base = {"run_id": result.get("run_id"), "model": model.get("path"), "precision": model.get("precision"),
            "runner": runtime.get("runner")}
    rows = []
    scenarios = result.get("scenarios", {})
    for name in ("single_stream", "multi_stream"):
        ss = scenarios.get(name)
        if not ss:
            continue
        power = ss.get("power") or {}
        rows.append(dict(base, scenario=name, batch=ss["batch"], queries=ss["queries"],
                         throughput=ss.get("qps"), total_w=power.get("total_w"),
                         mj_per_inference=power.get("mj_per_inference"),
                         **{k: ss["latency"][k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")}))
    off = scenarios.get("offline")
    if off:
        for row in off["rows"]:
            power = row.get("power") or {}
            rows.append(dict(base, scenario="offline", batch=row["batch"], queries=row["queries"],
                             throughput=row["throughput"], total_w=power.get("total_w"),
                             mj_per_inference=power.get("mj_per_inference"),
                             **{k: row["latency"][k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")}))
    return rows


def to_csv(results: List[Dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for result in results:
        for row in result_rows(result):
            writer.writerow(row)
    return buffer.getvalue()


def save_csv(path: str, results: List[Dict[str, Any]]) -> None:
    write_text_atomic(path, to_csv(results))
