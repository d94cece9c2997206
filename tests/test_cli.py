"""The command line as a user meets it: one clear line on stderr, exit 2, no traceback."""

import os
import subprocess

import pytest
import torch
from conftest import REPO, default_sigint, edgekit_cmd


def run_cli(*args, cwd=None):
    return subprocess.run(edgekit_cmd(*args), capture_output=True, text=True, cwd=cwd or REPO, timeout=600)


def assert_user_error(proc, pattern):
    import re

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgekit: error: ")
    assert re.search(pattern, lines[0]), lines[0]


def test_unknown_recipe_key(tmp_path):
    proc = run_cli("run", "--set", "data.bogus=1", "--out", str(tmp_path / "o"))
    assert_user_error(proc, r"unknown key 'data\.bogus'; valid keys under data: batch_size")
    assert not (tmp_path / "o").exists()


def test_bad_checkpoints(tmp_path):
    assert_user_error(run_cli("inspect", str(tmp_path / "missing.pth")), "checkpoint not found")
    cut = tmp_path / "cut.pth"
    torch.save({"w": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:100])
    assert_user_error(run_cli("inspect", str(cut)), "truncated or not a PyTorch file")
    import torchvision

    other = tmp_path / "vgg.pth"
    torch.save(torchvision.models.vgg11().features.state_dict(), other)
    assert_user_error(run_cli("inspect", str(other)), "not a torchvision ResNet-50")
    evil = tmp_path / "evil.pth"
    marker = tmp_path / "ran"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")  # a protocol-0 pickle
    assert_user_error(run_cli("inspect", str(evil)), "pickled Python objects that could run code|not a PyTorch file")
    assert not marker.exists()


def test_empty_and_unreadable_image_folders(tmp_path):
    out = tmp_path / "out"
    base = ["run", "--set", "data.dataset=imagefolder", "--set", "teacher.epochs=1", "--out", str(out)]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli(*base, "--set", "data.root=" + str(empty)), r"has no train/ folder")
    (empty / "train").mkdir()
    (empty / "val").mkdir()
    assert_user_error(run_cli(*base, "--set", "data.root=" + str(empty)), r"class folder")
    assert_user_error(run_cli(*base, "--set", "data.root=" + str(tmp_path / "nowhere")), "does not exist")
    broken = tmp_path / "broken"
    for split in ("train", "val"):
        (broken / split / "cat").mkdir(parents=True)
        for i in range(4):
            (broken / split / "cat" / "{}.png".format(i)).write_bytes(b"\x89PNG but not really")
    assert_user_error(run_cli(*base, "--set", "data.root=" + str(broken), "--set", "data.batch_size=2"),
                      r"cannot read image .*cat/\d\.png")
    # nothing half-written: no summary, no teacher, no temporary files
    left = sorted(os.listdir(out)) if out.exists() else []
    assert "summary.json" not in left and "teacher.pt" not in left
    assert not [p for p in left if p.endswith(".tmp")]


def test_unknown_make_target():
    proc = subprocess.run(["make", "-s", "deploy", "TARGET=nowhere"], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert proc.returncode != 0
    assert "unknown target 'nowhere'; available: cpu, orin, x86-gpu, xavier" in proc.stderr
    proc = subprocess.run(["make", "-s", "deploy", "TARGET=xavier"], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert proc.returncode != 0 and "target xavier runs on a device: give DEVICE=user@host" in proc.stderr


@pytest.mark.slow
def test_inspect_and_show_recipe_print_facts(tiny_run):
    out, summary, _ = tiny_run
    import json

    proc = run_cli("inspect", os.path.join(out, "student.pt"), "--image-size", "16")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["macs"] == summary["student"]["macs"] and report["num_classes"] == 10
    proc = run_cli("show-recipe", "--recipe", "digits", "--set", "distill.alpha=0.2")
    assert proc.returncode == 0 and "alpha: 0.2" in proc.stdout


@pytest.mark.slow
def test_ctrl_c_keeps_finished_epochs_and_the_rerun_resumes(tmp_path):
    import signal

    from conftest import TINY

    out = str(tmp_path / "digits")
    args = ["run", "--out", out] + [a for t in TINY if not t.startswith("teacher.epochs") for a in ("--set", t)]
    args += ["--set", "teacher.epochs=3", "--set", "quantize.enabled=false"]
    proc = subprocess.Popen(edgekit_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=default_sigint)
    for line in proc.stdout:
        if line.startswith("teacher epoch 1/3"):
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "interrupted; finished stages and epochs are kept" in stderr and "Traceback" not in stderr
    assert os.path.exists(os.path.join(out, "teacher.train.pt"))
    assert not os.path.exists(os.path.join(out, "summary.json"))
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "teacher: resuming after epoch 1/3" in again.stdout
    assert "teacher epoch 1/3" not in again.stdout
