"""An installed edgekit (a non-editable wheel in a fresh venv) finds its presets from any folder, and a user's
own ./benchmarks/recipes and ./deploy/targets win on a name clash."""

import os
import subprocess
import sys
import venv

import pytest
from conftest import REPO, edgekit_cmd


def _run(argv, cwd, **kw):
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=600, **kw)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_finds_presets_from_any_folder(tmp_path):
    wheels = tmp_path / "wheels"
    proc = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                 str(wheels), REPO], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = [str(p) for p in wheels.iterdir() if p.suffix == ".whl"]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(str(env_dir))
    python = str(env_dir / "bin" / "python")
    # The base install is the device side's: numpy and pyyaml only (no torch, no onnxruntime).
    proc = _run([python, "-m", "pip", "install", "--quiet", wheel], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    edgekit = str(env_dir / "bin" / "edgekit")
    shown = _run([edgekit, "show-recipe", "--recipe", "digits"], cwd=str(elsewhere))
    assert shown.returncode == 0, shown.stderr
    assert "name: digits" in shown.stdout and "target_macs_ratio: 0.2" in shown.stdout
    helped = _run([edgekit, "deploy", "--target", "xavier", "--help"], cwd=str(elsewhere))
    assert helped.returncode == 0 and "--device" in helped.stdout, helped.stderr
    # The shipped targets load too (validated), from the installed package, not from a checkout.
    code = "from edgekit.targets import available_targets, load_target; print(available_targets(), " \
           "load_target('xavier').tensorrt)"
    listed = _run([python, "-c", code], cwd=str(elsewhere))
    assert listed.returncode == 0, listed.stderr
    assert "['cpu', 'orin', 'x86-gpu', 'xavier'] 8.5.2" in listed.stdout
    located = _run([python, "-c", "import edgekit.presets as p; print(p.search_path('recipe')[1][1])"],
                   cwd=str(elsewhere))
    assert str(env_dir) in located.stdout and REPO not in located.stdout


def test_users_own_presets_win_on_a_name_clash(tmp_path):
    (tmp_path / "benchmarks" / "recipes").mkdir(parents=True)
    (tmp_path / "benchmarks" / "recipes" / "digits.yaml").write_text("name: digits\nseed: 7\n")
    (tmp_path / "benchmarks" / "recipes" / "mine.yaml").write_text("name: mine\nprune: {target_macs_ratio: 0.3}\n")
    (tmp_path / "deploy" / "targets").mkdir(parents=True)
    (tmp_path / "deploy" / "targets" / "bench-box.yaml").write_text("name: bench-box\nbatches: [1, 16]\n")
    shown = _run(edgekit_cmd("show-recipe", "--recipe", "digits"), cwd=str(tmp_path))
    assert shown.returncode == 0 and "seed: 7" in shown.stdout, shown.stderr
    mine = _run(edgekit_cmd("show-recipe", "--recipe", "mine"), cwd=str(tmp_path))
    assert mine.returncode == 0 and "target_macs_ratio: 0.3" in mine.stdout
    missing = _run(edgekit_cmd("show-recipe", "--recipe", "nope"), cwd=str(tmp_path))
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("edgekit: error: recipe 'nope' not found; give a YAML path or one of the "
                                      "presets: digits, digits-efficientnet, digits-mobilenetv2, digits-mobilenetv3, "
                                      "imagenet, mine")
    code = "from edgekit.targets import available_targets, load_target; print(available_targets(), " \
           "load_target('bench-box').batches)"
    listed = _run([sys.executable, "-c", code], cwd=str(tmp_path))
    assert "['bench-box', 'cpu', 'orin', 'x86-gpu', 'xavier'] [1, 16]" in listed.stdout, listed.stderr
    # Outside such a folder the shipped digits is found again.
    assert "seed: 0" in _run(edgekit_cmd("show-recipe", "--recipe", "digits"), cwd=os.path.dirname(str(tmp_path))
                             ).stdout
