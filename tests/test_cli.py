"""The command line as a user meets it: one clear line on stderr, exit 2, no traceback."""

import argparse
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, default_sigint, edgekit_cmd

from edgekit.errors import EdgekitError


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
    assert_user_error(run_cli("inspect", str(tmp_path / "missing.pth")),
                      r"missing\.pth does not exist: give a \.pt/\.pth checkpoint or an \.onnx model")
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
    assert proc.returncode != 0 and "target xavier runs on a device: give --device user@host" in proc.stderr


def test_make_deploy_installs_what_the_job_needs_and_make_test_adds_the_dev_tools(tmp_path):
    def planned(*args):
        proc = subprocess.run(["make", "-s", "-n", *args, "VENV=" + str(tmp_path / "venv")], capture_output=True,
                              text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [line for line in proc.stdout.splitlines() if "pip install" in line]

    assert [line.split("install --quiet ")[1] for line in planned("deploy")] == ["--upgrade pip", "-e '.[host,device]'"]
    assert planned("test")[-1].endswith("-e '.[host,device,dev]'") and planned("lint") == planned("test")
    import re

    with open(os.path.join(REPO, "pyproject.toml")) as f:
        pins = re.findall(r'"(torch(?:vision)?==[^"]+)"', f.read())
    cpu = planned("deploy", "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert len(pins) == 2 and cpu[1].endswith("--index-url https://download.pytorch.org/whl/cpu " + " ".join(pins))


def test_deploy_without_a_device_names_the_flags_before_importing_torch():
    assert_user_error(run_cli("deploy", "--target", "xavier"), r"^edgekit: error: target xavier runs on a device: "
                      r"give --device user@host \(and --ssh-port, --ssh-key if needed; with make: DEVICE=")
    # the arguments are checked before the host side (torch, the pipeline) is imported: seconds, not 15 s
    code = "import sys\nfrom edgekit.cli import main\nrc = main(['deploy', '--target', 'xavier'])\n" \
           "print(rc, sorted(m for m in ('torch', 'edgekit.host.pipeline') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.split() == ["2", "[]"], proc.stdout + proc.stderr


def test_a_missing_checkpoint_is_reported_before_the_data_scan(tmp_path):
    missing = tmp_path / "resnet50.pth"
    proc = run_cli("run", "--recipe", "imagenet", "--set", "data.root=" + str(tmp_path / "flowers"),
                   "--set", "model.checkpoint=" + str(missing), "--out", str(tmp_path / "out"))
    assert_user_error(proc, r"model\.checkpoint .*resnet50\.pth does not exist: give the path of a torchvision")
    assert "data:" not in proc.stdout and not (tmp_path / "out").exists()
    from edgekit.host.pipeline import run
    from edgekit.recipe import load_recipe

    recipe = load_recipe("imagenet", ["data.root=" + str(tmp_path), "model.checkpoint=" + str(missing)])
    with pytest.raises(EdgekitError, match="does not exist"):  # the library path checks it first too
        run(recipe, str(tmp_path / "out"), log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_run_help_names_every_stage_and_every_argument_has_help():
    from edgekit.cli import build_parser
    from edgekit.host.pipeline import STAGES

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    run_help = " ".join(commands["run"].format_help().split())
    assert len(STAGES) == 12
    assert " -> ".join(s.name for s in STAGES) in run_help  # the description names them in order
    missing = ["{} {}".format(name, "/".join(a.option_strings) or a.dest) for name, sub in commands.items()
               for a in sub._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []


@pytest.mark.slow
def test_inspect_and_show_recipe_print_facts(tiny_run, tmp_path, capsys):
    import json
    import shutil

    from edgekit.cli import main

    out, summary, _ = tiny_run
    student, macs = os.path.join(out, "student.pt"), summary["student"]["macs"]
    # the size the student was trained at comes from its own record (16 px here), not 224
    assert main(["inspect", student]) == 0
    shown = capsys.readouterr().out
    assert "image size  16 (recorded in the file)" in shown and "{:.2f} M MACs".format(macs / 1e6) in shown
    assert "{:.2f} M params".format(summary["student"]["params"] / 1e6) in shown
    assert main(["inspect", student, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["macs"], report["image_size"], report["num_classes"]) == (macs, 16, 10)
    # a file without that record: summary.json beside it, else 224 with a word on --image-size
    bare = torch.load(student, weights_only=True)
    bare["meta"].pop("image_size")
    for beside, size, source in ((True, 16, "from summary.json beside it"), (False, 224, "--image-size")):
        folder = tmp_path / ("with" if beside else "without")
        folder.mkdir()
        if beside:
            shutil.copy(os.path.join(out, "summary.json"), str(folder))
        torch.save(bare, str(folder / "old.pt"))
        assert main(["inspect", str(folder / "old.pt"), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["image_size"] == size and source in report["image_size_from"]

    # ONNX files are read too: opset, inputs and outputs, nodes, MACs, and what the layout says they are
    assert main(["inspect", os.path.join(out, "model.int8.qdq.onnx")]) == 0
    shown = capsys.readouterr().out
    assert "ONNX, opset 17" in shown and "int8 (qdq, for tensorrt (explicit Q/DQ))" in shown
    assert "input       input float batchx3x16x16" in shown and "output      logits float batchx10" in shown
    for name in ("model.fp32.onnx", "model.int8.cpu.onnx"):
        assert main(["inspect", os.path.join(out, name), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["format"] == "onnx" and report["image_size"] == 16 and report["nodes"] > 50
        # convolutions and the classifier; torch-pruning's count adds BatchNorm, ReLU and pooling (1% here)
        assert macs * 0.97 < report["macs"] < macs, name
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
