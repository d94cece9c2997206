"""`edgekit run-jobs`: the device's job runner (resume, error files, fingerprint), with a fake step runner
where the steps' content does not matter and with real `edgekit` subprocesses where it does."""

import json
import os
import subprocess

import pytest
from conftest import REPO, edgekit_cmd

from edgekit.device import layout
from edgekit.device.jobs import (
    ERROR_SCHEMA,
    JOBS_SCHEMA,
    SCHEMA_VERSION,
    describe_failure,
    load_error,
    load_jobs,
    run_jobs,
)
from edgekit.errors import EdgekitError


def _jobs(folder, stems, fingerprint="f1", steps=None):
    doc = {"schema": JOBS_SCHEMA, "schema_version": SCHEMA_VERSION, "fingerprint": fingerprint, "target": "cpu",
           "recipe": "digits",
           "jobs": [{"stem": stem, "labels": dict(zip(("variant", "precision", "placement"), stem.split("."))),
                     "steps": steps or [{"stage": "build", "argv": ["build-engine", stem]},
                                        {"stage": "bench", "argv": ["bench", stem, "--out", layout.result_path(stem)]}]}
                    for stem in stems]}
    path = folder / layout.JOBS_FILE
    path.write_text(json.dumps(doc))
    return str(path)


class FakeSteps(object):
    """Records each step; a bench step writes its result, unless the stem/stage is told to fail."""

    def __init__(self, fail=None):
        self.calls, self.timeouts, self.fail = [], [], fail or {}

    def __call__(self, argv, cwd, log, timeout):
        sub, stem = argv[3], argv[4]
        self.calls.append((sub, stem))
        self.timeouts.append(timeout)
        if self.fail.get(stem) == sub:
            return 2, ["some progress", "edgekit: error: {} broke in {}".format(stem, sub)]
        if sub == "bench":
            with open(os.path.join(cwd, layout.result_path(stem)), "w") as f:
                f.write("{}")
        return 0, ["ok"]


def test_each_job_builds_then_benches_as_its_own_edgekit_process(tmp_path):
    steps = FakeSteps()
    assert run_jobs(_jobs(tmp_path, ["student.fp16.gpu", "student.int8.gpu"]), python="/dev/py", log=lambda m: None,
                    step_runner=steps) == []
    assert steps.calls == [("build-engine", "student.fp16.gpu"), ("bench", "student.fp16.gpu"),
                           ("build-engine", "student.int8.gpu"), ("bench", "student.int8.gpu")]


def test_a_failed_step_writes_its_error_file_and_the_other_jobs_still_run(tmp_path):
    steps = FakeSteps(fail={"student.fp16.gpu": "build-engine", "student.int8.gpu": "bench"})
    lines = []
    errors = run_jobs(_jobs(tmp_path, ["student.fp16.gpu", "student.int8.gpu", "teacher.fp16.gpu"]), python="/py",
                      log=lines.append, step_runner=steps)
    assert [e["stem"] for e in errors] == ["student.fp16.gpu", "student.int8.gpu"]
    # a failed build skips that job's bench; the next job goes on
    assert ("bench", "student.fp16.gpu") not in steps.calls and ("bench", "teacher.fp16.gpu") in steps.calls
    error = load_error(str(tmp_path / layout.error_path("student.fp16.gpu")))
    assert error["schema"] == ERROR_SCHEMA and error["stage"] == "build" and error["exit_code"] == 2
    assert error["message"] == "student.fp16.gpu broke in build-engine"  # the step's own error line
    assert error["command"] == ["/py", "-m", "edgekit.cli", "build-engine", "student.fp16.gpu"]
    assert error["labels"] == {"variant": "student", "precision": "fp16", "placement": "gpu", "target": "cpu",
                               "recipe": "digits"}
    assert len(error["run_id"]) == 22 and error["created"] and error["seconds"] >= 0
    assert load_error(str(tmp_path / layout.error_path("student.int8.gpu")))["stage"] == "bench"
    assert "[run] student.int8.gpu failed at bench: edgekit: error: student.int8.gpu broke in bench" in lines


def test_resume_keeps_measured_jobs_retries_failed_ones_and_drops_all_when_the_bundle_changed(tmp_path):
    stems = ["student.fp16.gpu", "student.int8.gpu"]
    run_jobs(_jobs(tmp_path, stems), log=lambda m: None, step_runner=FakeSteps(fail={"student.int8.gpu": "bench"}))
    # same bundle: the measured job is kept, the failed one tried again (and its old error file removed)
    steps, lines = FakeSteps(), []
    assert run_jobs(_jobs(tmp_path, stems), log=lines.append, step_runner=steps) == []
    assert "[run] student.fp16.gpu already measured, kept" in lines
    assert [c for c in steps.calls if c[1] == "student.fp16.gpu"] == []
    assert not (tmp_path / layout.error_path("student.int8.gpu")).exists()
    # another bundle (models, seconds, power mode): every earlier result measured something else
    (tmp_path / layout.error_path("student.fp16.gpu")).write_text("{}")
    steps = FakeSteps()
    run_jobs(_jobs(tmp_path, stems, fingerprint="f2"), log=lambda m: None, step_runner=steps)
    assert ("bench", "student.fp16.gpu") in steps.calls and ("bench", "student.int8.gpu") in steps.calls
    assert (tmp_path / layout.RESULTS_DIR / layout.BUNDLE_STAMP).read_text().strip() == "f2"
    assert not (tmp_path / layout.error_path("student.fp16.gpu")).exists()


def test_a_crash_without_an_error_line_is_described_by_its_last_output_and_status():
    assert describe_failure(-11, ["building...", ""]) == "building... (killed by signal 11)"
    assert describe_failure(1, []) == "exit status 1"
    assert describe_failure(2, ["edgekit: error: first", "x", "edgekit: error: the real one"]) == "the real one"


def test_malformed_jobs_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "jobs.json"
    bad.write_text(json.dumps({"schema": JOBS_SCHEMA, "schema_version": SCHEMA_VERSION,
                               "jobs": [{"stem": "x", "steps": [{"stage": "train", "argv": []}]}]}))
    with pytest.raises(EdgekitError, match="malformed job"):
        load_jobs(str(bad))
    bad.write_text(json.dumps({"schema": JOBS_SCHEMA, "schema_version": 99, "jobs": []}))
    with pytest.raises(EdgekitError, match="jobs schema version 99"):
        load_jobs(str(bad))


def test_run_jobs_command_streams_real_steps_and_files_their_own_error_line(tmp_path):
    """Real `python -m edgekit.cli bench` processes: a corrupt model's own error line reaches the error
    file; the command exits 3 after every job had its turn."""
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model")
    steps = [{"stage": "bench", "argv": ["bench", "bad.onnx", "--seconds", "0.01", "--no-power", "--out",
                                          layout.result_path("student.fp32.cpu")]}]
    path = _jobs(tmp_path, ["student.fp32.cpu"], steps=steps)
    proc = subprocess.run(edgekit_cmd("run-jobs", path), capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "runner: onnxruntime" in proc.stdout  # the step's own output, streamed through
    assert "1 job(s) failed: student.fp32.cpu" in proc.stderr
    error = load_error(str(tmp_path / layout.error_path("student.fp32.cpu")))
    assert error["message"].startswith("bad.onnx is not a valid ONNX model for onnxruntime")
    assert error["command"][1:4] == ["-m", "edgekit.cli", "bench"] and error["stage"] == "bench"


def test_a_hung_step_is_stopped_at_its_time_limit_and_the_next_job_runs(tmp_path):
    """A build that never ends (a real process, with a child of its own) used to block every job after it."""
    import sys
    import time

    hung = tmp_path / "hung-python"
    hung.write_text("#!/bin/sh\nsleep 30 &\nwait\n")  # a step whose helper holds the output pipe too
    hung.chmod(0o755)
    steps = [{"stage": "build", "argv": ["build-engine", "student.fp16.gpu"], "timeout_s": 0.5}]
    path = _jobs(tmp_path, ["student.fp16.gpu"], steps=steps)
    started = time.time()
    (error,) = run_jobs(path, python=str(hung), log=lambda m: None)
    assert time.time() - started < 10
    assert error["exit_code"] == 124 and error["timed_out"] is True and error["timeout_s"] == 0.5
    assert error["message"] == ("the step ran past its time limit of 0.5 s and was stopped (a hung build or GPU?); the "
                                "other jobs go on")
    assert load_error(str(tmp_path / layout.error_path("student.fp16.gpu")))["stage"] == "build"
    # the default limits come from the stage, and every step gets one
    fake, other = FakeSteps(), tmp_path / "other"
    other.mkdir()
    run_jobs(_jobs(other, ["student.int8.gpu"]), python=sys.executable, log=lambda m: None, step_runner=fake)
    assert fake.timeouts == [3600.0, 3600.0]
