"""ONNX export, INT8 quantization, the TensorRT calibration cache and the TensorRT lint."""

import json
import os
import subprocess

import numpy as np
import onnx
import pytest
from conftest import REPO, edgekit_cmd
from onnx import TensorProto, helper, numpy_helper

from edgekit.device.engine.calibcache import read_calibration_cache as read_trt_calibration_cache
from edgekit.device.engine.calibcache import version_tag
from edgekit.errors import EdgekitError
from edgekit.host.compress.quantize import (
    calibration_ranges,
    write_trt_calibration_cache,
)
from edgekit.trtlint import check_tensorrt_compatible, lint_model

pytestmark = pytest.mark.slow


def _load(out, name):
    return onnx.load(os.path.join(out, name))


def test_fp32_export_is_opset17_named_dynamic_and_matches_pytorch(tiny_run):
    out, summary, _ = tiny_run
    model = _load(out, "model.fp32.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    fp32 = next(m for m in summary["models"] if m["name"] == "fp32")
    assert fp32["max_abs_diff_vs_pytorch"] < 1e-3 and fp32["top1_agreement_vs_pytorch"] == 100.0
    assert {m["name"] for m in summary["models"]} == {"fp32", "fp16", "int8.qdq", "int8.cpu"}
    for entry in summary["models"]:
        for key in ("path", "precision", "top1", "p50_ms"):
            assert entry[key] is not None
    fp16 = _load(out, "model.fp16.onnx")
    assert any(i.data_type == TensorProto.FLOAT16 for i in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # same feed as FP32


def test_pruned_onnx_is_smaller(tiny_run):
    out, _, _ = tiny_run
    dense = os.path.getsize(os.path.join(out, "compare", "dense.fp32.onnx"))
    ours = os.path.getsize(os.path.join(out, "compare", "ours.fp32.onnx"))
    assert ours < 0.8 * dense


def test_tensorrt_qdq_model_follows_the_placement_rules(tiny_run):
    out, _, _ = tiny_run
    model = _load(out, "model.int8.qdq.onnx")
    assert lint_model(model) == []
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = init[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), node.name
        if node.op_type == "Conv":
            assert producer[node.input[0]].op_type == "DequantizeLinear"  # activation quantized
            assert producer[node.input[1]].op_type == "DequantizeLinear"  # weight quantized
            weight_dq = producer[node.input[1]]
            weight_q = producer[weight_dq.input[0]]  # TensorRT 8.5: FP32 weights behind a Q->DQ pair
            assert weight_q.op_type == "QuantizeLinear" and init[weight_q.input[0]].dtype == np.float32
            assert init[weight_dq.input[1]].size == init[weight_q.input[0]].shape[0]  # per output channel
        if node.op_type == "Add":
            kinds = [producer[i].op_type for i in node.input]
            assert kinds == ["Conv", "DequantizeLinear"], (node.name, kinds)  # fusable conv+add
    assert not any(n.op_type == "Gemm" and producer[n.input[0]].op_type == "DequantizeLinear"
                   for n in model.graph.node)  # the classifier stays FP32


def test_cpu_model_is_uint8_and_the_lint_says_it_is_not_for_tensorrt(tiny_run):
    out, _, _ = tiny_run
    model = _load(out, "model.int8.cpu.onnx")
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert init[first_q.input[2]].dtype == np.uint8
    rules = {v.rule for v in lint_model(model)}
    assert "qdq-int8" in rules
    expected = r"model\.int8\.cpu\.onnx is not TensorRT 8\.5 compatible: node .*\[qdq-int8\]"
    with pytest.raises(EdgekitError, match=expected):
        check_tensorrt_compatible(os.path.join(out, "model.int8.cpu.onnx"))


def test_calibration_cache_holds_the_same_scales(tiny_run, tmp_path):
    out, _, _ = tiny_run
    header, scales = read_trt_calibration_cache(os.path.join(out, "calib.cache"))
    assert header == "TRT-8502-EntropyCalibration2"
    ranges = calibration_ranges(os.path.join(out, "calib.ranges.json"))
    assert "input" in scales and len(scales) > 50
    for name in ("input", next(n for n in scales if n.endswith("Relu_output_0"))):
        low, high = ranges[name]
        assert scales[name] == pytest.approx(max(abs(low), abs(high)) / 127.0, rel=1e-6)
    # the exact text format: "<name>: <8 hex digits of the big-endian float32>"
    path = str(tmp_path / "c.cache")
    # TensorRT 10 numbers its tag major*10000 + minor*100 + patch; DLA needs EntropyCalibration2 whatever
    # method found the ranges (a MinMaxCalibration header would be skipped by an entropy calibrator)
    write_trt_calibration_cache(path, {"input": (-2.54, 1.0)}, ["input"], "10.3.0")
    assert open(path).read() == "TRT-100300-EntropyCalibration2\ninput: 3ca3d70a\n"  # 0.02 as float32
    assert version_tag("8.5.2") == "8502" and version_tag("10.3") == "100300" and version_tag("8.6.1") == "8601"


def test_quantization_report_names_layers_worst_first(tiny_run):
    _, summary, _ = tiny_run
    quant = summary["quantization"]
    assert quant["requested"] == "best" and quant["calibration_samples"] == 32
    assert quant["methods_top1"][quant["method"]] == max(quant["methods_top1"].values())
    for flavour in ("qdq", "cpu"):
        rows = quant["worst_layers"][flavour]
        assert rows and all(r["node"] and r["rmse"] >= 0 for r in rows)
        assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)


def test_compare_section(tiny_run):
    _, summary, _ = tiny_run
    compare = summary["compare"]
    combos = {(r["model"], r["runtime"], r["precision"]) for r in compare["rows"]}
    assert {("dense", "pytorch-eager", "fp32"), ("dense", "onnxruntime", "fp32"), ("dense", "onnxruntime", "int8"),
            ("ours", "onnxruntime", "int8")} <= combos
    assert sorted({r["batch"] for r in compare["rows"]}) == [1, 2]
    for row in compare["rows"]:
        assert row["input_shape"] == [row["batch"], 3, 32, 32] and row["p50_ms"] > 0 and row["throughput"] > 0
        assert (row["path"] is None) == (row["runtime"] == "pytorch-eager")
    assert compare["speedup_vs_ort_fp32"] > 0 and compare["speedup_vs_torch_fp32"] > 0


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, elem=TensorProto.FLOAT, shape=(1, 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_lint_rules_name_the_node():
    unsupported = _model([helper.make_node("Det", ["x"], ["y"], name="the_det")], [_vi("x", shape=(2, 2))],
                         [_vi("y", shape=())])
    (v,) = lint_model(unsupported)
    assert v.rule == "unsupported-op" and v.node == "the_det"
    assert lint_model(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_vi("x")], [_vi("y")],
                             opset=18))[0].rule == "opset"
    big = numpy_helper.from_array(np.array([2 ** 40], dtype=np.int64), "shape")
    found = lint_model(_model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
                              [_vi("x")], [_vi("y")], [big]))
    assert [(f.rule, f.node) for f in found] == [("int64-weights", "reshape")]
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zero = numpy_helper.from_array(np.array(3, dtype=np.int8), "z")
    found = lint_model(_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                               helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")],
                              [_vi("x")], [_vi("y")], [scale, zero]))
    assert {(f.rule, f.node) for f in found} == {("qdq-zero-point", "q"), ("qdq-zero-point", "dq")}


def test_lint_flags_a_residual_add_without_qdq(tiny_run, tmp_path):
    out, _, _ = tiny_run
    model = _load(out, "model.int8.qdq.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    add = next(n for n in model.graph.node if n.op_type == "Add")
    add.input[1] = producer[add.input[1]].input[0]  # bypass the residual DequantizeLinear
    add.input[1] = producer[add.input[1]].input[0]  # ... and its QuantizeLinear
    path = str(tmp_path / "broken.onnx")
    onnx.save(model, path)
    proc = subprocess.run(edgekit_cmd("lint", path, "--all"), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "node {}: residual Add has no Q/DQ".format(add.name) in proc.stdout
    ok = subprocess.run(edgekit_cmd("lint", os.path.join(out, "model.int8.qdq.onnx")), capture_output=True, text=True)
    assert ok.returncode == 0 and "TensorRT 8.5 compatible" in ok.stdout
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    proc = subprocess.run(edgekit_cmd("lint", str(bad)), capture_output=True, text=True)
    assert proc.returncode == 2 and "is not a readable ONNX file" in proc.stderr


def test_lint_groups_the_cpu_int8_models_violations_by_rule(tiny_run, capsys):
    from edgekit.cli import main
    from edgekit.trtlint import lint

    out, _, _ = tiny_run
    path = os.path.join(out, "model.int8.cpu.onnx")
    found = lint(path)  # onnxruntime's u8s8 layout breaks TensorRT's rules at nearly every node
    rules = sorted({v.rule for v in found}, key=lambda r: (-sum(v.rule == r for v in found), r))
    assert len(found) > 50 and len(rules) < 6
    assert main(["lint", path]) == 2
    printed, error = capsys.readouterr()
    lines = printed.splitlines()
    assert lines[0] == "{}: {} TensorRT 8.5 violation(s) of {} rule(s) (--all lists every node):".format(
        path, len(found), len(rules))
    assert [line.split()[0] for line in lines[1:]] == rules  # one line a rule, the most frequent first
    assert "{} x  e.g. node ".format(sum(v.rule == rules[0] for v in found)) in lines[1]
    assert error.startswith("edgekit: error: {} has {} TensorRT 8.5 violation(s) of {} rule(s) ({})".format(
        path, len(found), len(rules), ", ".join(rules)))
    assert main(["lint", path, "--all"]) == 2
    assert len(capsys.readouterr().out.splitlines()) == len(found)


def test_summary_keeps_the_figures_on_disk(tiny_run):
    out, summary, _ = tiny_run
    with open(os.path.join(out, "summary.json")) as f:
        on_disk = json.load(f)
    assert on_disk["compare"]["rows"] == summary["compare"]["rows"]
    assert [s["name"] for s in on_disk["stages"]] == ["teacher", "compress", "evaluate", "export", "quantize",
                                                       "fallback", "int8", "measure", "variants", "evalset", "compare"]
