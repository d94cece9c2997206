"""MLPerf's log files as LoadGen writes them, laid out as an Open-division submission lays them out.

    <root>/systems/<system>.json                                  the system description
    <root>/results/<system>/<model>/<Scenario>/performance/run_1/ mlperf_log_{summary,detail}.txt
    <root>/results/<system>/<model>/<Scenario>/accuracy/          mlperf_log_{accuracy.json,summary,detail}.txt,
                                                                  accuracy.txt (the top-1 edgekit scored)

The detail log is LoadGen's machine-readable record (`:::MLLOG {json}` lines: result_validity,
percentiles, early-stopping estimates); the accuracy log holds each sample's response as hex bytes
(here: the predicted class as one little-endian int64). MLPerf's Closed division forbids pruning and
retraining, so an edgekit student is an Open result. Python 3.8 clean, stdlib and numpy only.
"""

import json
import os
import platform
import re
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ...artifacts import write_json_atomic, write_text_atomic
from ...errors import EdgekitError

SCENARIO_FOLDERS = {"single_stream": "SingleStream", "multi_stream": "MultiStream", "offline": "Offline"}
SUMMARY_LOG = "mlperf_log_summary.txt"
DETAIL_LOG = "mlperf_log_detail.txt"
ACCURACY_LOG = "mlperf_log_accuracy.json"
ACCURACY_TXT = "accuracy.txt"
TRACE_LOG = "mlperf_log_trace.json"
RESPONSE_DTYPE = np.dtype("<i8")  # what the system under test answers per sample: its top-1 class

# What MLPerf Inference requires of an edge submission's performance run (for comparison: edgekit's runs
# override these to seconds, so VALID here means valid under the recorded settings, not submittable).
SUBMISSION_MINIMUMS = {"min_duration_s": 600, "single_stream_min_queries": 1024,
                       "multi_stream_min_queries": 662, "offline_min_samples": 24576}


def slug(text: str) -> str:
    """A folder name MLPerf's submission checker accepts: letters, digits, dot, dash and underscore."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")
    return cleaned or "unknown"


def run_folder(root: str, system: str, model: str, scenario: str, mode: str) -> str:
    """Where one LoadGen run writes its logs (performance: run_1; accuracy: accuracy)."""
    leaf = os.path.join("performance", "run_1") if mode == "performance" else "accuracy"
    return os.path.join(root, "results", system, model, SCENARIO_FOLDERS[scenario], leaf)


def system_path(root: str, system: str) -> str:
    return os.path.join(root, "systems", system + ".json")


def drop_empty_trace(folder: str) -> None:
    """LoadGen writes an empty trace file even with tracing off: an empty JSON file only misleads readers."""
    path = os.path.join(folder, TRACE_LOG)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        os.unlink(path)


def read_detail(folder: str) -> Dict[str, Any]:
    """Every `:::MLLOG` record of a run's detail log as {key: value} (the last value of a key wins)."""
    path = os.path.join(folder, DETAIL_LOG)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as exc:
        raise EdgekitError("LoadGen wrote no detail log in {} ({}); see its summary there".format(
            folder, exc)) from None
    records: Dict[str, Any] = {}
    for line in lines:
        if not line.startswith(":::MLLOG"):
            continue
        try:
            entry = json.loads(line[len(":::MLLOG"):])
        except ValueError:
            continue  # a record LoadGen cut off (it was interrupted): the others still count
        if isinstance(entry, dict) and "key" in entry:
            records[str(entry["key"])] = entry.get("value")
    return records


def summary_validity(folder: str) -> Optional[str]:
    """`Result is : VALID` (or INVALID) from the human-readable summary, as a cross-check of the detail log."""
    try:
        with open(os.path.join(folder, SUMMARY_LOG), encoding="utf-8", errors="replace") as f:
            match = re.search(r"^Result is\s*:\s*(\w+)", f.read(), re.MULTILINE)
    except OSError:
        return None
    return match.group(1) if match else None


def _ms(value: Any) -> Optional[float]:
    return round(float(value) / 1e6, 4) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def sample_latency(records: Dict[str, Any], per_query: bool = False) -> Dict[str, Any]:
    """LoadGen's latency figures in milliseconds (per sample, or per query for MultiStream)."""
    infix = "_per_query" if per_query else ""
    lead = "result_{{}}{}_latency_ns".format("_query" if per_query else "")
    out = {"min_ms": _ms(records.get(lead.format("min"))), "max_ms": _ms(records.get(lead.format("max"))),
           "mean_ms": _ms(records.get(lead.format("mean")))}
    for p in (50, 90, 95, 97, 99, 99.9):
        out["p{}_ms".format(str(p).replace(".", "_"))] = _ms(
            records.get("result_{:.2f}_percentile{}_latency_ns".format(p, infix)))
    out["count"] = records.get("result_query_count")
    return out


def early_stopping(records: Dict[str, Any], scenario: str) -> Dict[str, Any]:
    """LoadGen's early-stopping verdict and estimates: SingleStream's p90 (and p99) estimates, MultiStream's p99."""
    met = records.get("early_stopping_met")
    text = " ".join(str(records.get("early_stopping_result") or "").replace("*", " ").split()) or None
    found: Dict[str, Any] = {"met": met, "text": text}
    # LoadGen logs 0 for an estimate it could not make (too few queries)
    estimate = (lambda key: _ms(records.get(key)) or None)  # noqa: E731
    if scenario == "single_stream":
        found["p90_ms"] = estimate("early_stopping_latency_ss") if met else None
        found["p99_ms"] = estimate("early_stopping_latency_ms")
    elif scenario == "multi_stream":
        found["p99_ms"] = estimate("early_stopping_latency_ms") if met else None
    return found


def verdict(folder: str, records: Dict[str, Any]) -> Dict[str, Any]:
    """VALID or INVALID, and LoadGen's reasons when invalid."""
    validity = records.get("result_validity") or summary_validity(folder)
    if validity not in ("VALID", "INVALID"):
        raise EdgekitError("LoadGen's logs in {} record no result validity: the run did not finish".format(folder))
    reason = (records.get("result_invalid_reason") or "").strip()
    if validity == "INVALID" and records.get("early_stopping_met") is False:
        # LoadGen leaves early stopping out of result_invalid_reason; its own text says what was missing
        said = " ".join(str(records.get("early_stopping_result") or "").replace("*", " ").split())
        reason = "{} early stopping not met: {}".format(reason, said).strip()
    return {"validity": validity, "min_duration_met": records.get("result_min_duration_met"),
            "min_queries_met": records.get("result_min_queries_met"), "early_stopping_met":
            records.get("early_stopping_met"), "invalid_reason": reason or None}


def accuracy_top1(folder: str, labels: np.ndarray) -> Dict[str, Any]:
    """Top-1 from mlperf_log_accuracy.json: each sample's response is its predicted class."""
    path = os.path.join(folder, ACCURACY_LOG)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read LoadGen's accuracy log {}: {}".format(path, exc)) from None
    predicted: Dict[int, int] = {}
    for entry in entries:
        data = bytes.fromhex(entry["data"])
        if len(data) != RESPONSE_DTYPE.itemsize:
            raise EdgekitError("{}: sample {} answered {} bytes, expected one int64 class".format(
                path, entry.get("qsl_idx"), len(data)))
        predicted[int(entry["qsl_idx"])] = int(np.frombuffer(data, RESPONSE_DTYPE)[0])
    if len(predicted) != labels.shape[0]:
        raise EdgekitError("{} holds {} distinct samples, the eval set {}: an accuracy run answers each once".format(
            path, len(predicted), labels.shape[0]))
    correct = sum(1 for index, cls in predicted.items() if cls == int(labels[index]))
    return {"top1": round(100.0 * correct / labels.shape[0], 3), "images": int(labels.shape[0]),
            "correct": correct, "log": path}


def write_accuracy_txt(folder: str, measured: Dict[str, Any]) -> str:
    path = os.path.join(folder, ACCURACY_TXT)
    write_text_atomic(path, "top-1 = {:.3f}% ({} of {} images, scored by edgekit from {})\n".format(
        measured["top1"], measured["correct"], measured["images"], ACCURACY_LOG))
    return path


def system_description(system: str, environment: Dict[str, Any], runtime: Dict[str, Any],
                       placement: Optional[str]) -> Dict[str, Any]:
    """MLPerf's system description fields, from the environment the result records."""
    accelerator = {"gpu": "GPU", "dla0": "DLA core 0", "dla1": "DLA core 1"}.get(placement or "", "")
    device = environment.get("device_model") or environment.get("cpu") or platform.machine()
    software = ["{} {}".format(runtime.get("runtime", runtime.get("runner", "")), runtime.get("runtime_version", "")),
                "Python {}".format(environment.get("python"))]
    if environment.get("l4t"):
        software.append("L4T {}".format(environment["l4t"]))
    return {
        "division": "open", "status": "RDI", "submitter": "edgekit", "system_name": system,
        "system_type": "edge", "number_of_nodes": 1,
        "host_processor_model_name": environment.get("cpu"), "host_processors_per_node": 1,
        "host_processor_core_count": environment.get("cpu_count"),
        "accelerator_model_name": "{} {}".format(device, accelerator).strip() if accelerator else "N/A",
        "accelerators_per_node": 1 if accelerator else 0,
        "framework": software[0].strip(), "operating_system": environment.get("os"),
        "other_software_stack": ", ".join(software[1:]),
        "sw_notes": "power mode {}; jetson_clocks {}".format(
            (environment.get("nvpmodel") or {}).get("name", "n/a") if isinstance(environment.get("nvpmodel"), dict)
            else "n/a", environment.get("jetson_clocks") or "n/a"),
    }


def write_system(root: str, system: str, description: Dict[str, Any]) -> str:
    path = system_path(root, system)
    write_json_atomic(path, description)
    return path


def log_files(folder: str, names: Sequence[str] = (SUMMARY_LOG, DETAIL_LOG, ACCURACY_LOG, ACCURACY_TXT)) -> List[str]:
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
