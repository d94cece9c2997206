"""Latency tables of architectures other than ResNet-50: the layer kinds traced from the model, a table
measured on onnxruntime that predicts a pruned MobileNet, and the early check of an unreachable target."""

import functools
import json
import os

import pytest

from edgekit.device.latency.layers import network_onnx
from edgekit.device.latency.net import Net, layer_onnx
from edgekit.device.latency.table import layers_hash, table_key
from edgekit.errors import EdgekitError

pytest.importorskip("torch_pruning")


@functools.lru_cache(maxsize=None)
def _net(arch_name, image_size=224, classes=10):
    from edgekit.host.arch import architecture

    arch = architecture(arch_name)
    return arch.latency_layers(arch.build(classes), image_size)


def _kind_of(net, module):
    return net.kinds[next(kind for name, kind, _, _ in net.layers if name == module)]


def test_mobilenet_v3_kinds_include_depthwise_and_squeeze_excite_with_their_shapes():
    net = _net("mobilenet_v3_large")
    # features.4: 24 -> 72 expansion, 5x5/2 depthwise on 72 channels at 56x56, SE squeezing 72 to 24, 72 -> 40
    dw = _kind_of(net, "features.4.block.1.0")
    assert (dw.op, dw.depthwise, dw.kernel, dw.stride, dw.pad, dw.in_hw, dw.out_hw) == ("conv", True, 5, 2, 2, 56, 28)
    assert (dw.cin, dw.cout, dw.act, dw.cin_group) == (72, 72, "relu", dw.cout_group)
    se = _kind_of(net, "features.4.block.2.fc1")
    assert (se.op, se.cin, se.cout, se.in_hw, se.act, se.gate) == ("se", 72, 24, 28, "relu", "hardsigmoid")
    assert se.cin_group == dw.cout_group and net.groups[se.cout_group]["prunable"]  # its squeeze is pruned apart
    project = _kind_of(net, "features.5.block.3.0")  # 120 -> 40, added to the block's input
    assert (project.kernel, project.residual, project.act, project.cout) == (1, True, None, 40)
    stem = _kind_of(net, "features.0.0")
    assert (stem.cin, stem.cin_fixed, stem.stride, stem.act) == (3, True, 2, "hardswish")
    head = _kind_of(net, "classifier.3")
    assert (head.op, head.cin, head.cout, head.cout_fixed) == ("linear", 1280, 10, True)
    # features.5 and .6 are the same block: they share every kind, and no conv is counted twice
    by_name = {name: kind for name, kind, _, _ in net.layers}
    assert by_name["features.6.block.1.0"] == by_name["features.5.block.1.0"]
    assert len(net.kinds) < len(net.layers) == 56  # 52 convs (SE pairs as one) + the 2 linear layers
    assert not any(name.endswith("fc2") for name in by_name)


def test_the_description_is_data_and_keys_the_table():
    v3 = _net("mobilenet_v3_large", 32)
    again = Net.from_dict(json.loads(json.dumps(v3.to_dict())))
    assert layers_hash(again) == layers_hash(v3) and len(again.kinds) == len(v3.kinds)
    keys = {table_key("onnxruntime-cpu", "cpu", "ort", 32, 1, "fp32", 2, net)["layers"]
            for net in (v3, _net("efficientnet_b0", 32), _net("mobilenet_v3_large", 32, 3), None)}
    assert len(keys) == 4  # each architecture, and another class count, is another table
    with pytest.raises(EdgekitError, match="not a layer description"):
        Net.from_dict({"format": "edgekit.width-spec/2"})


def test_layer_and_network_graphs_run_with_the_described_shapes():
    ort = pytest.importorskip("onnxruntime")
    from edgekit.device.latency.backends import feeds_for

    net = _net("efficientnet_b0", 32)
    for kind in net.kinds.values():
        cin, cout = kind.cin, kind.cout
        model = layer_onnx(kind, cin, cout, 2)
        (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feeds_for(model))
        want = (2, cout) if kind.op == "linear" else (2, cin if kind.op == "se" else cout, kind.out_hw, kind.out_hw)
        assert y.shape == want, kind
    half = {g: max(8, w // 2) for g, w in net.dense_groups().items()}
    model = network_onnx(net, half, 1)
    (logits,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds_for(model))
    assert logits.shape == (1, 10)


@pytest.fixture(scope="module")
def v3_table(tmp_path_factory):
    """A MobileNetV3-Large table at 32x32 on onnxruntime-cpu, 2 widths per axis (seconds here)."""
    pytest.importorskip("onnxruntime")
    from edgekit.device.latency.table import load_or_build
    from edgekit.device.runtime.registry import latency_backend

    backend = latency_backend("onnxruntime-cpu", threads=1, min_runs=5, min_seconds=0.02, warmup=2)
    folder = str(tmp_path_factory.mktemp("v3-table"))
    table, path = load_or_build(backend, 32, 1, points=2, folder=folder, log=lambda _m: None,
                                net=_net("mobilenet_v3_large", 32))
    return table, path, backend


def test_a_table_on_onnxruntime_predicts_a_pruned_mobilenet(v3_table):
    import torch

    from edgekit.device.latency.allocate import allocate
    from edgekit.host.arch import architecture
    from edgekit.host.compress.latency import current_widths, importances, measure_ms, prune_to_groups

    table, _, backend = v3_table
    # The fit's error on its own whole networks, timed in 20 ms windows at 32 px on 2 shared cores: quiet, the
    # mean is 0.08-0.11 and the worst network 0.24-0.40, so the worst one is only held to a broken-fit bound.
    assert table.data["mean_abs_error"] < 0.2 and table.data["max_abs_error"] < 0.6, table.data["max_abs_error"]
    torch.manual_seed(0)
    dense = architecture("mobilenet_v3_large").build(10).eval()
    widths = current_widths(dense, table.net)
    scores = importances(dense, "l1", net=table.net)
    chosen, predicted = allocate(table, widths, scores, 0.6 * table.predict_ms(widths), min_channels=8)
    pruned = prune_to_groups(dense, chosen, scores, net=table.net)
    assert current_widths(pruned, table.net) == chosen
    measured = measure_ms([dense, pruned], backend, 32, 1, rounds=5)
    # The real exported models, timed side by side. At 32 px on one shared core, per-op overhead is most of a
    # run, and runs of this test measured 0.37-0.59 against the predicted 0.60: the pruned model is faster,
    # within 2x of the table's ratio. How close the table gets at full size is a benchmark's
    # figure (docs/architectures.md: MobileNetV3-Large at 224 px, mean error 4.4%).
    predicted_ratio, measured_ratio = predicted / table.predict_ms(widths), measured[1] / measured[0]
    assert predicted_ratio <= 0.6 + 1e-9
    assert measured_ratio < 1 and 0.5 < measured_ratio / predicted_ratio < 2, (predicted_ratio, measured_ratio)


def test_an_unreachable_latency_target_fails_before_round_one(v3_table, tmp_path):
    from conftest import TINY

    from edgekit.host.arch import architecture
    from edgekit.host.compress.spiral import spiral
    from edgekit.host.data import load_data
    from edgekit.recipe import load_recipe

    _, path, _ = v3_table
    recipe = load_recipe("digits-mobilenetv3", TINY + [
        "data.image_size=32", "prune.target=latency", "prune.target_latency_ratio=0.01",
        "prune.latency_image_size=32", "prune.latency_table=" + path, "bench.threads=1"])
    lines = []
    folder = str(tmp_path / "rounds")
    with pytest.raises(EdgekitError, match=r"final latency budget \(1\.0% of the dense model's .* below the latency "
                                           r"table's floor .*raise the target"):
        spiral(architecture("mobilenet_v3_large").build(10), load_data(recipe.data, recipe.seed), recipe, folder,
               teacher_key="untrained", log=lines.append)
    assert not [line for line in lines if line.startswith("round ")]  # nothing was pruned, nothing distilled
    assert not os.path.exists(os.path.join(folder, "round1.train.pt"))


def test_a_table_of_other_layers_is_refused_in_one_line(v3_table, tmp_path):
    from edgekit.host.compress.latency import _table_for
    from edgekit.recipe import load_recipe

    _, path, backend = v3_table
    recipe = load_recipe("digits-mobilenetv3", ["prune.target=latency", "prune.target_latency_ratio=0.5",
                                                "prune.latency_image_size=64", "prune.latency_table=" + path])
    from edgekit.host.arch import architecture

    with pytest.raises(EdgekitError, match="was measured for other layers .*32x32.* 64x64"):
        _table_for(architecture("mobilenet_v3_large").build(10), recipe, backend, lambda _m: None)
