"""One run per artifacts folder: the second is refused at once naming the holder; a killed holder frees it."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY, edgekit_cmd

from edgekit.errors import EdgekitError
from edgekit.lock import folder_lock, holder

HOLD = ("import sys, time\nfrom edgekit.lock import folder_lock\n"
        "with folder_lock(sys.argv[1], ['holder', 'test']):\n    print('held', flush=True)\n    time.sleep(120)\n")


def _hold(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, folder], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_folder_is_refused_naming_the_holder_and_freed_by_kill_9(tmp_path):
    folder = str(tmp_path / "out")
    proc = _hold(folder)
    try:
        with pytest.raises(EdgekitError, match=r"in use by pid {} on .* \(holder test\) since ".format(proc.pid)):
            with folder_lock(folder):
                pass
    finally:
        proc.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
        proc.wait()
    with folder_lock(folder, ["second"]):
        assert holder(folder)["pid"] == os.getpid() and holder(folder)["command"] == ["second"]


def test_the_lock_is_reentrant_in_one_process_and_not_taken_by_other_ranks(tmp_path, monkeypatch):
    folder = str(tmp_path)
    with folder_lock(folder):
        with folder_lock(folder):  # deploy holds the folder, then runs the host stages in it
            pass
        proc = subprocess.run([sys.executable, "-c", HOLD, folder], capture_output=True, text=True, cwd=REPO,
                              timeout=60)
        assert proc.returncode == 1 and "in use by pid {}".format(os.getpid()) in proc.stderr
    monkeypatch.setenv("RANK", "1")
    proc = _hold(folder)  # a torchrun rank 1 shares its writer's lock: it takes none
    try:
        monkeypatch.delenv("RANK")
        with folder_lock(folder):
            pass
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_two_edgekit_runs_on_one_folder(tmp_path):
    out = str(tmp_path / "digits")
    args = ["run", "--out", out] + [a for t in TINY for a in ("--set", t)]
    first = subprocess.Popen(edgekit_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=REPO)
    try:
        for line in first.stdout:
            if line.startswith("data:"):  # past the lock
                break
        started = time.monotonic()
        second = subprocess.run(edgekit_cmd(*args), capture_output=True, text=True, cwd=REPO, timeout=120)
        assert time.monotonic() - started < 30
        assert second.returncode == 2, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("edgekit: error: artifacts folder")
        assert "in use by pid {} ".format(first.pid) in lines[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = subprocess.Popen(edgekit_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=REPO)
    try:
        for line in third.stdout:
            if line.startswith("data:") or line.startswith("edgekit: error"):
                assert line.startswith("data:"), line
                break
        assert holder(out)["pid"] == third.pid
    finally:
        third.kill()
        third.wait()
