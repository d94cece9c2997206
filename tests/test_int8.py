"""INT8 that ships: calibrators compared, the per-layer fallback to a budget, the kept layers in every
flavour, the twin check and the lints. Tiny ONNX models built here, quantized by the very functions
the quantize and fallback stages call."""

import json
import subprocess

import numpy as np
import onnx
import pytest
from conftest import edgekit_cmd
from onnx import TensorProto, helper, numpy_helper

from edgekit.device.engine.builder import BuildConfig, plan_build, set_layer_precisions
from edgekit.device.engine.calibcache import format_cache
from edgekit.errors import EdgekitError
from edgekit.host.compress.quantize import calibration_ranges, choose_method, quantize
from edgekit.host.compress.quantize.calibrate import Histogram, entropy_amax
from edgekit.host.compress.quantize.evaluate import array_batches, logits
from edgekit.host.compress.quantize.fallback import _fewest, cpu_flavour, fallback_to_budget
from edgekit.host.compress.quantize.qdq import keep_float, layer_precisions, quantized_convs, write_cpu
from edgekit.host.compress.quantize.twin import check_twin, ptq_twin
from edgekit.trtlint import lint_model

SIZE = 8


def _residual_net(path, outlier=1.0):
    """conv1 -> relu1 -> conv2 -> Add(conv2, relu1) -> relu2 -> conv3 -> fc -> logits. `outlier` scales one
    output channel of conv2's weights: with one weight scale per tensor the other channels round away."""
    rng = np.random.RandomState(0)
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    w2[0] *= outlier
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "w1"),
             numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w3"),
             numpy_helper.from_array(rng.standard_normal((4 * SIZE * SIZE, 10)).astype(np.float32) * 0.1, "fc")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
             helper.make_node("Flatten", ["c3"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc")]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _data(fp32, n=200, seed=1):
    """Images, and the FP32 model's own predictions as labels (FP32 top-1 is 100% by construction)."""
    images = np.random.RandomState(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)
    return images, logits(fp32, images).argmax(1)


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    """Per-tensor weights on the outlier model: PTQ loses points, and conv2 is why."""
    out = tmp_path_factory.mktemp("fragile")
    fp32 = _residual_net(out / "model.fp32.onnx", outlier=60.0)
    images, labels = _data(fp32)
    calibration = [images[:32]]
    info = quantize(fp32, str(out), calibration, "best", per_channel=False, evaluation=array_batches(images, labels))
    return out, fp32, info, images, labels


def test_minmax_calibration_writes_the_observed_range(tmp_path):
    fp32 = _residual_net(tmp_path / "model.fp32.onnx")
    images, _ = _data(fp32, n=16)
    info = quantize(fp32, str(tmp_path), [images[:8], images[8:]], "minmax")
    ranges = calibration_ranges(info["paths"]["ranges"])
    assert info["method"] == "minmax"
    assert ranges["input"] == pytest.approx((float(images.min()), float(images.max())), rel=1e-6)
    assert ranges["r1"][0] == 0.0 and ranges["r1"][1] > 0  # a ReLU output stays [0, max]
    assert lint_model(onnx.load(info["paths"]["qdq"])) == []


def _naive_entropy(counts, edges, levels=128):
    """TensorRT's entropy calibration written out bin by bin (the reference the vectorised one matches)."""
    best, amax = np.inf, None
    for i in range(levels, len(counts) + 1):
        p = counts[:i].astype(np.float64)
        p[-1] += counts[i:].sum()
        level = np.floor(np.arange(i) * levels / i).astype(int)
        q = np.zeros(i)
        for j in range(levels):
            members = (level == j) & (counts[:i] > 0)
            if members.any():
                q[members] = counts[:i][members].sum() / members.sum()
        if q.sum() == 0 or np.any((p > 0) & (q == 0)):
            continue
        p, q = p / p.sum(), q / q.sum()
        kl = float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))
        if kl < best:
            best, amax = kl, edges[i]
    return amax


def test_entropy_is_tensorrts_kl_calibration():
    x = np.abs(np.random.RandomState(0).standard_t(3, 20000))
    counts, edges = np.histogram(x, bins=300)
    assert entropy_amax(Histogram(counts, edges, 0.0, float(x.max()))) == pytest.approx(_naive_entropy(counts, edges))


def test_best_takes_the_highest_top1_and_breaks_ties_toward_entropy():
    method, why = choose_method("best", {"entropy": 97.0, "minmax": 98.0, "mse": 98.0})
    assert method == "mse" and why.startswith("tie at 98.00% between mse, minmax: mse taken, the first of them")
    method, why = choose_method("best", {"entropy": 98.0, "minmax": 98.0})
    assert method == "entropy" and "IInt8EntropyCalibrator2" in why
    assert choose_method("best", {"entropy": 96.0, "minmax": 98.0})[0] == "minmax"
    with pytest.raises(EdgekitError, match="needs the methods compared"):
        choose_method("best", {})


def test_the_fallback_meets_the_budget_with_the_sensitive_layer(fragile):
    _, fp32, info, images, labels = fragile
    qdq = onnx.load(info["paths"]["qdq"])
    result = fallback_to_budget(qdq, fp32, array_batches(images, labels), lambda: images[100:164], 100.0, 0.5)
    assert info["methods"] and result["top1_before"] < 99.0  # PTQ really loses points here
    assert result["met"] and result["top1_after"] >= 99.5
    assert result["kept"] == [s["node"] for s in result["sensitivity"]][:len(result["kept"])]
    assert [s["kept"] for s in result["steps"]] == list(range(len(result["kept"]) + 1))
    within = fallback_to_budget(qdq, fp32, array_batches(images, labels), lambda: 1 / 0, 100.0, 50.0)
    assert within["kept"] == [] and within["sensitivity"] == []  # within budget: nothing measured


def test_the_cpu_flavour_leaves_out_more_layers_until_it_meets_the_budget_too(fragile, tmp_path):
    _, fp32, info, images, labels = fragile
    batches, ranges = array_batches(images, labels), calibration_ranges(info["paths"]["ranges"])
    qdq = onnx.load(info["paths"]["qdq"])
    result = fallback_to_budget(qdq, fp32, batches, lambda: images[100:164], 100.0, 0.5)
    dst, lines = str(tmp_path / "model.int8.cpu.onnx"), []
    # as if the Q/DQ flavour had met the budget with nothing kept: the CPU flavour must find its own layers
    cpu = cpu_flavour(fp32, dst, ranges, dict(result, kept=[]), batches, False, True, log=lines.append)
    assert cpu["met"] and cpu["top1"] >= 99.5 and cpu["excluded"]
    # sensitivity order, then what this flavour alone quantizes; an excluded convolution takes its Add along
    # (the Add goes with conv2, its main branch: it is not tried again alone)
    assert cpu["excluded"] == ([s["node"] for s in result["sensitivity"]] + ["fc"])[:len(cpu["excluded"])]
    assert any("leaving out 1 layer(s)" in line for line in lines)
    if "conv2" in cpu["excluded"]:
        assert {"add", "relu2"} <= set(cpu["excluded_nodes"])
    ops = {n.name: n.op_type for n in onnx.load(dst).graph.node}
    assert all(ops.get(name) in ("Conv", "MatMul", "Add", "Relu") for name in cpu["excluded_nodes"])
    none = cpu_flavour(fp32, dst, ranges, dict(result, kept=[], sensitivity=[]), batches, False, True,
                       log=lines.append)
    assert not none["met"] and none["excluded"] == [] and "no layer sensitivity was measured" in lines[-1]


@pytest.mark.parametrize("start,most", [(0, 66), (15, 80), (3, 4), (0, 1)])
def test_the_cpu_flavour_search_finds_the_fewest_layers_in_logarithmic_scorings(start, most):
    for needed in range(start, most + 2):  # most + 1: no count meets the budget
        asked = []

        def meets(count, needed=needed, asked=asked):
            asked.append(count)
            return count >= needed

        found = _fewest(start, most, meets)
        assert found == min(max(needed, start), most)
        assert all(start <= c <= most for c in asked) and len(asked) == len(set(asked))
        assert len(asked) <= 2 * max(1, (most - start)).bit_length() + 1


def test_the_cpu_flavour_file_is_the_one_chosen_not_the_last_one_scored(fragile, tmp_path, monkeypatch):
    """Needing 3 layers out, the search scores 1, 3, then 2 (a miss) and chooses 3: the file left at dst must
    be the 3-layer one. The scorer counts the written file's float convolutions and MatMuls (no
    DequantizeLinear feeding them), so which file is on disk is what it scores."""
    from edgekit.host.compress.quantize import fallback

    _, fp32, info, images, labels = fragile
    batches, ranges = array_batches(images, labels), calibration_ranges(info["paths"]["ranges"])
    result = fallback_to_budget(onnx.load(info["paths"]["qdq"]), fp32, batches, lambda: images[100:164], 100.0, 0.5)
    order = [s["node"] for s in result["sensitivity"]] + ["fc"]
    assert len(order) >= 3

    def layers_in_float(path, _batches, _threads=None):
        graph = onnx.load(path).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        names = {n.name for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
                 and not dequantized.intersection(n.input)}
        return 100.0 if sum(layer in names for layer in order) >= 3 else 0.0

    monkeypatch.setattr(fallback, "top1", layers_in_float)
    dst = str(tmp_path / "model.int8.cpu.onnx")
    cpu = cpu_flavour(fp32, dst, ranges, dict(result, kept=[], fp32_top1=100.0), batches, False, True)
    assert cpu["met"] and len(cpu["excluded"]) == 3 and layers_in_float(dst, batches) == 100.0


def test_kept_layers_are_absent_from_qdq_in_every_flavour(fragile, tmp_path):
    out, fp32, info, _, _ = fragile
    kept = keep_float(onnx.load(info["paths"]["qdq"]), ["conv2"])
    producer = {o: n for n in kept.graph.node for o in n.output}
    node = {n.name: n for n in kept.graph.node}
    assert [producer[i].op_type for i in node["conv2"].input[:1]] == ["Relu"] and node["conv2"].input[1] == "w2"
    assert [getattr(producer.get(i), "op_type", None) for i in node["add"].input] == ["Conv", "Relu"]
    assert quantized_convs(kept) == ["conv1", "conv3"] and lint_model(kept) == []
    used = {i for n in kept.graph.node for i in n.input}
    assert all(o in used for n in kept.graph.node for o in n.output if n.op_type.endswith("QuantizeLinear"))
    cpu = tmp_path / "model.int8.cpu.onnx"
    write_cpu(fp32, str(cpu), calibration_ranges(info["paths"]["ranges"]), per_channel=False, exclude=["conv2"])
    cpu_nodes = {n.name: n for n in onnx.load(str(cpu)).graph.node}
    assert cpu_nodes["conv2"].input[1] == "w2" and cpu_nodes["conv1"].input[1] != "w1"  # float weights, kept alone
    assert layer_precisions(onnx.load(fp32), ["conv2"]) == {"conv2": "fp16", "add": "fp16", "relu2": "fp16"}


def test_the_twin_check_fails_on_a_broken_export(fragile, tmp_path):
    _, fp32, info, images, labels = fragile
    batches = array_batches(images, labels)
    ranges = calibration_ranges(info["paths"]["ranges"])
    good = ptq_twin(onnx.load(fp32), ranges, [], False, info["paths"]["qdq"], batches)
    assert good["ok"] and good["images"] == len(images)
    broken = onnx.load(info["paths"]["qdq"])
    scale = next(t for t in broken.graph.initializer if t.name == "r1_scale")  # conv2's input scale
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 20, scale.name))
    path = str(tmp_path / "broken.qdq.onnx")
    onnx.save(broken, path)
    with pytest.raises(EdgekitError, match=r"a gap of .* points, over the 0.5 allowed"):
        ptq_twin(onnx.load(fp32), ranges, [], False, path, batches)
    assert check_twin(97.0, 96.6, images, "ref", "model")["gap"] == 0.4


def test_lint_rejects_a_half_quantized_convolution(fragile):
    _, _, info, _, _ = fragile
    model = onnx.load(info["paths"]["qdq"])
    conv = next(n for n in model.graph.node if n.name == "conv3")
    conv.input[1] = "w3"  # the weight bypasses its Q/DQ pair, the activation does not
    assert "qdq-partial" in {v.rule for v in lint_model(model)}


def test_every_int8_flavour_passes_edgekit_lint_and_polygraphy(fragile, tmp_path):
    """The fallback's flavours (the PTQ ones are the same writers with nothing kept): TensorRT's passes
    edgekit's lint (the CPU flavour is uint8 for onnxruntime by design), both pass Polygraphy's."""
    try:
        from polygraphy.tools import main as polygraphy
    except ImportError:
        pytest.skip("polygraphy is not installed (pip install -e '.[dev]' pins polygraphy and onnx-graphsurgeon)")
    out, fp32, info, _, _ = fragile
    kept = str(tmp_path / "fallback.qdq.onnx")
    onnx.save(keep_float(onnx.load(info["paths"]["qdq"]), ["conv2"]), kept)
    cpu = str(tmp_path / "fallback.cpu.onnx")
    write_cpu(fp32, cpu, calibration_ranges(info["paths"]["ranges"]), per_channel=False, exclude=["conv2"])
    assert subprocess.run(edgekit_cmd("lint", kept), capture_output=True).returncode == 0
    for path in (kept, cpu):
        report = str(tmp_path / "lint.json")
        assert polygraphy(["check", "lint", path, "-o", report]) == 0, path
        with open(report) as f:
            assert json.load(f)["summary"]["failing"] == [], path


def test_print_plan_and_print_trtexec_agree_on_layer_precisions(fragile, tmp_path, capsys):
    from edgekit.cli import main

    _, fp32, _, _, _ = fragile
    cache, layers = tmp_path / "calib.cache", tmp_path / "layer_precisions.json"
    cache.write_text(format_cache({"input": 0.01}, "8.5.2"))
    precisions = layer_precisions(onnx.load(fp32), ["conv2"])
    layers.write_text(json.dumps({"schema": "edgekit.layer_precisions/1", "constraints": "obey",
                                  "precisions": precisions}))
    args = [fp32, "--precision", "int8", "--dla", "0", "--calib", str(cache), "--layer-precisions", str(layers)]
    assert main(["build-engine"] + args + ["--print-plan"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert main(["build-engine"] + args + ["--print-trtexec"]) == 0
    line = capsys.readouterr().out.split()
    spec = next(a for a in line if a.startswith("--layerPrecisions=")).split("=", 1)[1]
    assert dict(pair.split(":") for pair in spec.split(",")) == plan["layer_precisions"] == precisions
    assert "--precisionConstraints=obey" in line and "OBEY_PRECISION_CONSTRAINTS" in plan["flags"]
    with pytest.raises(EdgekitError, match="applies to implicit INT8"):
        plan_build(BuildConfig(fp32, precision="fp16", layer_precisions=str(layers)))


def test_the_builder_sets_each_named_layer_and_refuses_a_name_the_network_lacks(monkeypatch):
    import types

    from edgekit.device.engine import builder

    monkeypatch.setattr(builder, "trt", types.SimpleNamespace(float32="float32", float16="float16", int8="int8"))

    class Layer(object):
        def __init__(self, name):
            self.name, self.precision = name, "float32"

    class Network(object):
        layers = [Layer("conv1"), Layer("conv2"), Layer("add")]
        num_layers = 3

        def get_layer(self, i):
            return self.layers[i]

    network = Network()
    set_layer_precisions(network, {"conv2": "fp16", "add": "fp16"})
    assert [layer.precision for layer in network.layers] == ["float32", "float16", "float16"]
    with pytest.raises(EdgekitError, match="layer conv9 of layer_precisions.json is not in the network"):
        set_layer_precisions(network, {"conv9": "fp16"})


def test_the_pipeline_ships_the_last_int8_stages_files(tiny_run):
    import filecmp
    import os

    from edgekit.device import layout

    out, summary, _ = tiny_run
    assert sorted(summary["quantization"]["methods_top1"]) == sorted(
        ["entropy", "percentile-99.999", "percentile-99.99", "mse", "minmax"])
    assert summary["fallback"]["twin"]["ok"] and summary["fallback"]["max_drop"] == 0.5
    shipped = summary["int8"]["from"]
    assert shipped[layout.INT8_QDQ] == layout.int8_stage_file("fallback", "qdq")
    assert shipped[layout.CALIB_CACHE] == layout.int8_stage_file("quantize", "cache")
    assert shipped[layout.INT8_FP32] == layout.FP32  # PTQ quantized the exported graph itself
    for name, source in shipped.items():
        assert filecmp.cmp(os.path.join(out, name), os.path.join(out, source), shallow=False), name
    with open(os.path.join(out, layout.LAYER_PRECISIONS)) as f:
        assert json.load(f)["precisions"] == summary["fallback"]["tensorrt_layer_precisions"]
