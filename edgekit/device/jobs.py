"""`edgekit run-jobs jobs.json`: the device's job runner (it replaces the shell program deploy used to generate).

jobs.json is written by the host (edgekit.deploy.plan) into the bundle folder. Each job is a list of
steps (`build-engine ...`, then `bench ...`), each an edgekit subcommand run as its own process:
a TensorRT or CUDA crash, or state a step leaves behind, costs that job only. Step output is streamed
as it comes. A step that fails writes results/<stem>.error.json (its own `edgekit: error:` line, the
stage, the command, the exit code, the time) and the runner goes on with the other jobs.

Resumable: a job whose result is already there is skipped (results are removed only once the host
has fetched them); every result is dropped when the bundle's fingerprint changed, since those
results measured other files or conditions. A failed job is tried again on the next run.

Python 3.8 clean and torch-free.
"""

import datetime
import glob
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..artifacts import read_json, remove_if_exists, write_json_atomic, write_text_atomic
from ..errors import EdgekitError
from . import layout

JOBS_SCHEMA = "edgekit.jobs"
ERROR_SCHEMA = "edgekit.job-error"
SCHEMA_VERSION = 1
STAGES = ("build", "bench", "handoff")
ERROR_PREFIX = "edgekit: error: "
TAIL_LINES = 20

# A step: (argv, cwd, log) -> (exit code, output lines). Tests pass their own.
StepRunner = Callable[[List[str], str, Callable[[str], None]], Tuple[int, List[str]]]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def load_jobs(path: str) -> Dict[str, Any]:
    """jobs.json, checked: every job names its stem and its steps' stages and argument lists."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read jobs file {}: {}".format(path, exc)) from None
    if not isinstance(data, dict) or data.get("schema") != JOBS_SCHEMA:
        raise EdgekitError("{} is not an edgekit jobs file (schema {})".format(path, JOBS_SCHEMA))
    if data.get("schema_version") != SCHEMA_VERSION:
        raise EdgekitError("{} has jobs schema version {}, this edgekit reads {}: deploy again with the same "
                           "edgekit on both ends".format(path, data.get("schema_version"), SCHEMA_VERSION))
    for job in data.get("jobs", []):
        steps = job.get("steps") if isinstance(job, dict) else None
        if not isinstance(job, dict) or not isinstance(job.get("stem"), str) or not isinstance(steps, list) or \
                not all(isinstance(s, dict) and s.get("stage") in STAGES and isinstance(s.get("argv"), list)
                        for s in steps):
            raise EdgekitError("{}: malformed job {!r}".format(path, job))
    return data


def error_line(lines: Sequence[str]) -> Optional[str]:
    """The step's own `edgekit: error:` message (the last one it printed), without the prefix."""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith(ERROR_PREFIX):
            return text[len(ERROR_PREFIX):].strip()
    return None


def describe_failure(code: int, lines: Sequence[str]) -> str:
    """Why a step failed, in one line: its own error line, else (a crash) its last output and the status."""
    own = error_line(lines)
    if own:
        return own
    if code < 0:
        status = "killed by signal {}".format(-code)
    else:
        status = "exit status {}".format(code)
    last = [line.strip() for line in lines if line.strip()]
    return "{} ({})".format(last[-1][:300], status) if last else status


def stream_step(argv: List[str], cwd: str, log: Callable[[str], None]) -> Tuple[int, List[str]]:
    """Run one step, passing each output line on as it arrives; keep the lines for the error file."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, errors="replace", env=env)
    except OSError as exc:
        return 127, ["cannot start {}: {}".format(argv[0], exc)]
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        log(line)
    return proc.wait(), lines


def _reset_if_stale(workdir: str, fingerprint: str, log: Callable[[str], None]) -> None:
    """Results measured another bundle (other models, seconds or power mode): drop them all."""
    results = os.path.join(workdir, layout.RESULTS_DIR)
    os.makedirs(results, exist_ok=True)
    stamp = os.path.join(results, layout.BUNDLE_STAMP)
    try:
        with open(stamp, encoding="utf-8") as f:
            before = f.read().strip()
    except OSError:
        before = None
    if before == fingerprint:
        return
    stale = glob.glob(os.path.join(results, "*.json"))
    if stale and before is not None:
        log("[run] the bundle changed: {} earlier result(s) dropped".format(len(stale)))
    for path in stale:
        remove_if_exists(path)
    write_text_atomic(stamp, fingerprint + "\n")


def write_error(path: str, job: Dict[str, Any], stage: str, command: List[str], code: int, lines: Sequence[str],
                seconds: float, labels: Dict[str, Any]) -> Dict[str, Any]:
    error = {
        "schema": ERROR_SCHEMA, "schema_version": SCHEMA_VERSION, "run_id": layout.new_run_id(), "created": _now(),
        "stem": job["stem"], "labels": labels, "stage": stage, "message": describe_failure(code, lines),
        "command": command, "exit_code": code, "seconds": round(seconds, 3),
        "output_tail": [line for line in lines if line.strip()][-TAIL_LINES:],
    }
    write_json_atomic(path, error)
    return error


def run_jobs(jobs_path: str, python: str = sys.executable, log: Callable[[str], None] = print,
             step_runner: StepRunner = stream_step) -> List[Dict[str, Any]]:
    """Run every job of `jobs_path` (in its folder); returns the errors of the jobs that failed."""
    data = load_jobs(jobs_path)
    workdir = os.path.dirname(os.path.abspath(jobs_path))
    _reset_if_stale(workdir, str(data.get("fingerprint") or "none"), log)
    errors = []
    jobs = data.get("jobs", [])
    for number, job in enumerate(jobs, 1):
        stem = job["stem"]
        result = os.path.join(workdir, layout.result_path(stem))
        error_file = os.path.join(workdir, layout.error_path(stem))
        if os.path.isfile(result) and os.path.getsize(result) > 0:
            log("[run] {} already measured, kept".format(stem))
            continue
        remove_if_exists(error_file)  # an earlier failure is tried again
        log("[run] {}/{} {}".format(number, len(jobs), stem))
        labels = dict(job.get("labels") or {}, target=data.get("target"), recipe=data.get("recipe"))
        for step in job["steps"]:
            command = [python, "-m", "edgekit.cli"] + [str(a) for a in step["argv"]]
            started = time.time()
            code, lines = step_runner(command, workdir, log)
            if code != 0:
                error = write_error(error_file, job, step["stage"], command, code, lines, time.time() - started,
                                    labels)
                log("[run] {} failed at {}: {}{}".format(stem, step["stage"], ERROR_PREFIX, error["message"]))
                errors.append(error)
                break
    log("[run] {} job(s): {} measured or kept, {} failed".format(len(jobs), len(jobs) - len(errors), len(errors)))
    return errors


def load_error(path: str) -> Dict[str, Any]:
    """A fetched results/<stem>.error.json, checked, or one clear error."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("schema") != ERROR_SCHEMA:
        raise EdgekitError("{} is not an edgekit job error".format(path))
    for key in ("run_id", "created", "stem", "stage", "message"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise EdgekitError("{} has no {}".format(path, key))
    if not isinstance(data.get("labels"), dict):
        raise EdgekitError("{} has no labels".format(path))
    return data
