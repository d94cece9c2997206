"""The host/device boundary: everything outside `edgekit/host/` runs on the Jetson, on Python 3.8
(JetPack 5) and without torch. Checked as whole folders, so a new module is covered the day it lands."""

import os
import pkgutil
import subprocess
import sys

from conftest import REPO

import edgekit

VERMIN = [os.path.join(os.path.dirname(sys.executable), "vermin"), "-t=3.8-", "--no-tips", "--violations",
          "--eval-annotations", "-v"]
# The one folder allowed to import torch; vermin and the import test cover everything else whole.
HOST_ONLY = ["--exclude-regex", r"edgekit/host/"]


def device_side_modules():
    names = []
    for info in pkgutil.walk_packages(edgekit.__path__, "edgekit."):
        if not info.name.startswith("edgekit.host"):
            names.append(info.name)
    return names


def test_device_side_code_needs_at_most_python_3_8():
    proc = subprocess.run([*VERMIN, *HOST_ONLY, "edgekit"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Target versions not met" not in proc.stdout
    # every file outside edgekit/host/ was scanned, and no host file
    expected = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(REPO, "edgekit")) for f in fs
                if f.endswith(".py") and "/edgekit/host" not in d]
    assert "Analyzing {} files".format(len(expected)) in proc.stdout, proc.stdout


def test_vermin_does_flag_newer_syntax(tmp_path):
    """The check above can fail: a 3.10 `match` statement is reported."""
    newer = tmp_path / "newer.py"
    newer.write_text("def f(x):\n    match x:\n        case 1:\n            return 1\n")
    proc = subprocess.run([*VERMIN, str(newer)], capture_output=True, text=True)
    assert proc.returncode == 1 and "Target versions not met" in proc.stdout


def test_device_side_imports_without_torch():
    modules = device_side_modules()
    assert "edgekit.device.bench.harness" in modules and "edgekit.cli" in modules
    assert not any(m.startswith("edgekit.host") for m in modules)
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "bad = [m for m in ('torch', 'torchvision', 'torch_pruning') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code, *modules], check=True, cwd=REPO)


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "edgekit", "tests"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout
