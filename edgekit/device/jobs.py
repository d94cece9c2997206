"""`edgekit run-jobs jobs.json`: the device's job runner (it replaces the shell program deploy used to generate).

jobs.json is written by the host (edgekit.deploy.plan) into the bundle folder. Each job is a list of
steps (`build-engine ...`, then `bench ...`), each an edgekit subcommand run as its own process:
a TensorRT or CUDA crash, or state a step leaves behind, costs that job only. Step output is streamed
as it comes. A step that fails writes results/<stem>.error.json (its own `edgekit: error:` line, the
stage, the command, the exit code, the time) and the runner goes on with the other jobs.

Every step has a time limit (`timeout_s` in the step, else STEP_TIMEOUTS by stage): a hung build (a
TensorRT tactic search that never ends, a wedged GPU) is stopped, with its process group, and gets an
error file saying so, instead of blocking every job after it.

Resumable: a job whose result is already there is skipped (results are removed only once the host
has fetched them); every result is dropped when the bundle's fingerprint changed, since those
results measured other files or conditions. A failed job is tried again on the next run.

Python 3.8 clean and torch-free.
"""

import datetime
import glob
import json
import os
import signal
import subprocess
import sys
import threading
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
# Seconds a step may take: a first Xavier build of a ResNet-50 engine takes minutes; a bench step runs
# a few seconds per scenario and batch, plus scoring the eval set.
STEP_TIMEOUTS = {"build": 3600.0, "bench": 3600.0, "handoff": 3600.0}  # a DeepStream hand-off builds its engine
TIMED_OUT = 124  # the exit status `timeout` gives a step it stopped

# A step: (argv, cwd, log, timeout seconds) -> (exit code, output lines). Tests pass their own.
StepRunner = Callable[[List[str], str, Callable[[str], None], float], Tuple[int, List[str]]]


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
                        and isinstance(s.get("timeout_s", 1.0), (int, float)) and s.get("timeout_s", 1.0) > 0
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


def _stop(proc: "subprocess.Popen[str]", stopped: threading.Event) -> None:
    """End the step's whole process group (a build's helpers too), so its output pipe closes."""
    stopped.set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def stream_step(argv: List[str], cwd: str, log: Callable[[str], None],
                timeout: float = STEP_TIMEOUTS["build"]) -> Tuple[int, List[str]]:
    """Run one step, passing each output line on as it arrives; keep the lines for the error file.
    A step still running after `timeout` seconds is stopped: exit status TIMED_OUT, and an error line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, errors="replace", env=env, start_new_session=True)
    except OSError as exc:
        return 127, ["cannot start {}: {}".format(argv[0], exc)]
    stopped = threading.Event()
    timer = threading.Timer(timeout, _stop, (proc, stopped))
    timer.daemon = True
    timer.start()
    lines = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            log(line)
        code = proc.wait()
    finally:
        timer.cancel()
    if stopped.is_set():
        lines.append("{}the step ran past its time limit of {:g} s and was stopped (a hung build or GPU?); the "
                     "other jobs go on".format(ERROR_PREFIX, timeout))
        return TIMED_OUT, lines
    return code, lines


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
                seconds: float, labels: Dict[str, Any], timeout: Optional[float] = None) -> Dict[str, Any]:
    error: Dict[str, Any] = {
        "schema": ERROR_SCHEMA, "schema_version": SCHEMA_VERSION, "run_id": layout.new_run_id(), "created": _now(),
        "stem": job["stem"], "labels": labels, "stage": stage, "message": describe_failure(code, lines),
        "command": command, "exit_code": code, "seconds": round(seconds, 3),
        "output_tail": [line for line in lines if line.strip()][-TAIL_LINES:],
    }
    if code == TIMED_OUT and timeout is not None:
        error.update(timed_out=True, timeout_s=timeout)
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
            timeout = float(step.get("timeout_s") or STEP_TIMEOUTS[step["stage"]])
            started = time.time()
            code, lines = step_runner(command, workdir, log, timeout)
            if code != 0:
                error = write_error(error_file, job, step["stage"], command, code, lines, time.time() - started,
                                    labels, timeout)
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
