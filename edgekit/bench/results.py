"""Benchmark results: versioned JSON, one file per run, written atomically; CSV export."""

import csv
import io
import json
from typing import Any, Dict, List

from ..artifacts import write_json_atomic, write_text_atomic
from ..errors import EdgekitError

SCHEMA = "edgekit.bench"
SCHEMA_VERSION = 1


def save_result(path: str, result: Dict[str, Any]) -> None:
    result = dict(result, schema=SCHEMA, schema_version=SCHEMA_VERSION)
    write_json_atomic(path, result)


def load_result(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as exc:
        raise EdgekitError("{} is not valid JSON ({}); was it cut short?".format(path, exc)) from None
    except OSError as exc:
        raise EdgekitError("cannot read {}: {}".format(path, exc.strerror or exc)) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EdgekitError("{} is not an edgekit benchmark result".format(path))
    if data.get("schema_version") != SCHEMA_VERSION:
        raise EdgekitError("{} has schema version {}, this edgekit reads {}".format(
            path, data.get("schema_version"), SCHEMA_VERSION))
    return data


CSV_COLUMNS = ["run_id", "model", "precision", "runner", "scenario", "batch", "queries", "p50_ms", "p90_ms",
               "p99_ms", "max_ms", "mean_ms", "throughput", "total_w", "mj_per_inference"]


def result_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    base = {"run_id": result.get("run_id"), "model": result.get("model", {}).get("path"),
            "precision": result.get("model", {}).get("precision"),
            "runner": result.get("runtime", {}).get("runner")}
    rows = []
    scenarios = result.get("scenarios", {})
    ss = scenarios.get("single_stream")
    if ss:
        power = ss.get("power") or {}
        rows.append(dict(base, scenario="single_stream", batch=ss["batch"], queries=ss["queries"],
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
