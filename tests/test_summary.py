"""summary.json: built from stage metrics only (skipped stages leave empty fields), read through one module."""

import json

import pytest

from edgekit import summary
from edgekit.errors import EdgekitError

CONFIG = {"name": "toy", "prune": {"method": "l1"}}
METRICS = {
    "teacher": {"top1": 90.0, "history": [{"epoch": 1}], "num_classes": 10},
    "compress": {"rounds": [{"round": 1, "top1": 80.0, "macs_ratio": 0.5, "key": "k", "width_spec": {}}]},
    "evaluate": {"teacher": {"top1": 90.0, "macs": 100, "params": 10, "macs_at_224": 1000},
                 "student": {"top1": 85.0, "macs": 50, "params": 4, "macs_at_224": 500, "width_spec": {"stem": 8}},
                 "agreement": 93.0},
    "measure": {"models": [{"name": "fp32", "path": "model.fp32.onnx", "top1": 85.0}]},
    "variants": {"variants": [{"name": "teacher", "path": "variants/teacher.fp32.onnx", "top1": 90.0,
                               "macs": 100, "params": 10, "macs_ratio": 1.0}]},
    "evalset": {"file": "eval.npz", "of": 20, "top1": {"model.fp32.onnx": 84.0}},
}


def _build(metrics):
    return summary.build(metrics, [{"name": n, "seconds": 1.0, "reused": False} for n in metrics], CONFIG,
                         input_shape=[1, 3, 16, 16], num_classes=10, environment={}, command=["edgekit", "run"])


def test_build_holds_the_figures_and_leaves_skipped_stages_empty():
    found = _build(METRICS)
    assert found["schema"] == summary.SCHEMA and found["recipe"] == "toy"
    assert found["student"]["macs_ratio"] == 0.5 and found["student"]["params_ratio"] == 0.4
    assert found["student"]["top1_delta"] == -5.0 and found["student"]["agreement_with_teacher"] == 93.0
    assert found["student"]["width_spec"] == {"stem": 8} and found["teacher"]["history"] == [{"epoch": 1}]
    assert found["rounds"] == [{"round": 1, "top1": 80.0, "macs_ratio": 0.5}]
    assert found["quantization"] == {} and found["compare"] is None  # quantize and compare did not run
    assert found["eval_set"]["of"] == 20


def test_read_accuracy_and_variants(tmp_path):
    (tmp_path / "variants").mkdir()
    (tmp_path / "variants" / "teacher.fp32.onnx").write_bytes(b"x")
    (tmp_path / "summary.json").write_text(json.dumps(_build(METRICS)))
    assert summary.variants(str(tmp_path)) == ["teacher"]
    found = summary.accuracy_for(str(tmp_path / "summary.json"), "/elsewhere/model.fp32.onnx")
    assert found["top1"] == 85.0 and found["eval_top1"] == 84.0 and found["macs_ratio"] == 0.5
    teacher = summary.accuracy_for(str(tmp_path / "summary.json"), "x.engine", "teacher.fp32.onnx")
    assert teacher["runtime"] == "pytorch" and teacher["macs"] == 100
    with pytest.raises(EdgekitError, match="lists no accuracy for model.int8.cpu.onnx"):
        summary.accuracy_for(str(tmp_path / "summary.json"), "model.int8.cpu.onnx")
    (tmp_path / "summary.json").write_text(json.dumps({"schema": "edgekit.summary/0"}))
    with pytest.raises(EdgekitError, match="is not an edgekit summary"):
        summary.read(str(tmp_path))
    assert summary.variants(str(tmp_path)) == []
    with pytest.raises(EdgekitError, match="cannot read summary"):
        summary.read(str(tmp_path / "missing.json"))
