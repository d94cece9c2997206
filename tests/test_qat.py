"""QAT with distillation (the qat stage): run end to end on the tiny digits run's folder, resumed after an
interruption, linted and twin-checked; and the one-line error where Model Optimizer is missing."""

import filecmp
import json
import os
import shutil
import sys

import numpy as np
import onnx
import pytest
from conftest import TINY
from onnx import numpy_helper

from edgekit.device import layout
from edgekit.host.pipeline import run
from edgekit.recipe import load_recipe
from edgekit.trtlint import lint_model

QAT = TINY + ["qat.enabled=true", "qat.epochs=2"]
STOP_AFTER = "qat epoch 1/2"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, as the log line announcing the first finished QAT epoch is written (the epoch's
    checkpoint is on disk by then: the Trainer saves before it announces)."""


def _stop_after_first_epoch(lines):
    def log(line):
        lines.append(line)
        if line.startswith(STOP_AFTER):
            raise Interrupted(line)
    return log


@pytest.fixture(scope="module")
def qat_runs(tiny_run, tmp_path_factory):
    """The tiny digits run's folder with QAT on: once interrupted after its first epoch and run again
    (resuming), and once straight through; each reuses every stage before qat."""
    pytest.importorskip("modelopt", reason="the qat extra is not installed (pip install -e '.[qat]')")
    out, _, _ = tiny_run
    found = {}
    for name in ("resumed", "straight"):
        folder = str(tmp_path_factory.mktemp("qat") / "digits")
        shutil.copytree(out, folder, ignore=shutil.ignore_patterns(layout.LOCK))
        first, lines = [], []
        if name == "resumed":
            with pytest.raises(Interrupted):
                run(load_recipe("digits", QAT), folder, log=_stop_after_first_epoch(first))
        found[name] = (folder, run(load_recipe("digits", QAT), folder, log=lines.append), first, lines)
    return found


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_an_interrupted_qat_run_resumes_after_its_epoch_and_ends_as_a_straight_one(qat_runs):
    folder, summary, first, lines = qat_runs["resumed"]
    assert os.path.exists(os.path.join(folder, "int8", "qat.train.pt")) is False  # spent once the stage finished
    assert any(line.startswith("qat: resuming after epoch 1/2") for line in lines)
    assert not any(line.startswith(STOP_AFTER) for line in lines)  # epoch 1 was not trained again
    assert any(line.startswith("qat epoch 2/2") for line in lines)
    straight = qat_runs["straight"][1]["qat"]
    # the first epoch's record came from the checkpoint; both epochs' figures are the straight run's
    assert [(h["loss"], h["val_top1"]) for h in summary["qat"]["history"]] == [
        (h["loss"], h["val_top1"]) for h in straight["history"]]
    resumed, uninterrupted = (_weights(os.path.join(f, layout.int8_stage_file("qat", "fp32")))
                              for f in (folder, qat_runs["straight"][0]))
    assert all(np.array_equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_the_qat_stage_ships_a_linted_twin_checked_int8_model(qat_runs):
    from edgekit.host.compress.quantize.qat import quant_points

    folder, summary, _, _ = qat_runs["straight"]
    ran = {s["name"]: s["reused"] for s in summary["stages"]}
    assert ran["quantize"] and ran["fallback"] and not ran["qat"]  # PTQ reused, QAT computed
    record = summary["qat"]
    assert record["twin"]["ok"] and record["twin"]["gap"] <= 0.5
    assert record["twin"]["reference"].startswith("PyTorch fake-quant")
    assert {"top1", "ptq_top1", "fallback_top1", "fp32_top1"} <= set(record)
    shipped = summary["int8"]["from"]
    for kind in ("qdq", "cpu", "cache", "fp32"):  # fp32: DLA's implicit INT8 gets the QAT weights with the scales
        assert shipped[layout.SHIPPED_INT8[kind]] == layout.int8_stage_file("qat", kind)
    assert shipped[layout.LAYER_PRECISIONS] == layout.int8_stage_file("fallback", "layers")
    for name, source in shipped.items():
        assert filecmp.cmp(os.path.join(folder, name), os.path.join(folder, source), shallow=False), name
    measured = {m["name"]: m for m in summary["models"]}
    assert measured["int8.qdq"]["tensorrt_lint"] == "clean"  # the measure stage scored the QAT model
    qat_qdq = onnx.load(os.path.join(folder, layout.int8_stage_file("qat", "qdq")))
    assert lint_model(qat_qdq) == []
    # the PTQ flavour's placement exactly (the same writers on the same graph), with trained weights
    ptq_qdq = onnx.load(os.path.join(folder, layout.int8_stage_file("fallback", "qdq")))
    points, ptq_points = quant_points(qat_qdq), quant_points(ptq_qdq)
    assert {n: c.tensor for n, c in points.convs.items()} == {n: c.tensor for n, c in ptq_points.convs.items()}
    residuals = [[[q[:2] for q in a.quantized] for a in p.adds] for p in (points, ptq_points)]
    assert residuals[0] == residuals[1]
    assert all(a.quantized for a in points.adds)  # every residual input of ResNet's blocks is quantized
    trained, exported = (_weights(os.path.join(folder, name)) for name in (layout.int8_stage_file("qat", "fp32"),
                                                                            layout.FP32))
    assert trained.keys() == exported.keys() and any(not np.array_equal(trained[k], exported[k]) for k in trained)


def test_the_qat_models_pass_polygraphy_lint(qat_runs, tmp_path):
    try:
        from polygraphy.tools import main as polygraphy
    except ImportError:
        pytest.skip("polygraphy is not installed (pip install -e '.[dev]' pins polygraphy and onnx-graphsurgeon)")
    folder = qat_runs["straight"][0]
    for kind in ("qdq", "cpu"):
        report = str(tmp_path / "lint.json")
        assert polygraphy(["check", "lint", os.path.join(folder, layout.int8_stage_file("qat", kind)),
                           "-o", report]) == 0
        with open(report) as f:
            assert json.load(f)["summary"]["failing"] == [], kind


class _NoModelopt(object):
    """An import blocker: Model Optimizer is not installed, as far as this interpreter can tell."""

    def find_spec(self, name, path=None, target=None):
        if name == "modelopt" or name.startswith("modelopt."):
            raise ModuleNotFoundError("No module named {!r}".format(name), name=name)
        return None


def test_qat_without_model_optimizer_fails_in_one_line_before_any_stage(tmp_path, monkeypatch, capsys):
    from edgekit.cli import main

    for name in [m for m in sys.modules if m == "modelopt" or m.startswith("modelopt.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoModelopt()] + sys.meta_path)
    out = tmp_path / "out"
    assert main(["run", "--recipe", "digits", "--set", "qat.enabled=true", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'edgekit[qat]'" in err[0] and "modelopt" in err[0]
    assert not (out / "manifest.json").exists()
    # without qat.enabled nothing asks for Model Optimizer
    from edgekit.host.pipeline import check_choices

    check_choices(load_recipe("digits", TINY))
