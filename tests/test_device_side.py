"""Device-side code runs on the Jetson: Python 3.8 (JetPack 5) and no torch."""

import os
import subprocess
import sys

from conftest import REPO

# The modules the device side imports today; runtime/, bench/, engine/ join as they land.
DEVICE_SIDE = ["edgekit/__init__.py", "edgekit/errors.py", "edgekit/artifacts.py", "edgekit/lazy.py", "edgekit/cli.py",
               "edgekit/report/__init__.py", "edgekit/report/store.py"]
DEVICE_PACKAGES = ["edgekit/runtime", "edgekit/bench", "edgekit/engine"]


def _targets():
    return DEVICE_SIDE + [p for p in DEVICE_PACKAGES if os.path.isdir(os.path.join(REPO, p))]


VERMIN = [os.path.join(os.path.dirname(sys.executable), "vermin"), "-t=3.8-", "--no-tips", "--violations",
          "--eval-annotations"]


def test_device_side_code_needs_at_most_python_3_8():
    proc = subprocess.run([*VERMIN, *_targets()], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Target versions not met" not in proc.stdout


def test_vermin_does_flag_newer_syntax(tmp_path):
    """The check above can fail: a 3.10 `match` statement is reported."""
    newer = tmp_path / "newer.py"
    newer.write_text("def f(x):\n    match x:\n        case 1:\n            return 1\n")
    proc = subprocess.run([*VERMIN, str(newer)], capture_output=True, text=True)
    assert proc.returncode == 1 and "Target versions not met" in proc.stdout


def test_device_side_imports_without_torch():
    code = ("import sys, edgekit, edgekit.errors, edgekit.artifacts, edgekit.cli, edgekit.runtime, "
            "edgekit.runtime.onnxrt, edgekit.runtime.tensorrt, edgekit.bench.harness, edgekit.bench.power, "
            "edgekit.bench.results, edgekit.engine, edgekit.engine.dla_report, edgekit.trtlint, "
            "edgekit.report.store; "
            "bad = [m for m in ('torch', 'torchvision', 'torch_pruning') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "edgekit", "tests"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout
