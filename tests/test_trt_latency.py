"""The TensorRT latency backend on the strict fakes (tests/fake_trt.py builds engines from the real ONNX
graphs, tests/fake_cuda.py runs them on a simulated clock): every runner released, GPU compute timed
rather than infer() with its copies, and a table's cells timed many to an engine, each branch's time
read from IProfiler. The exit check pycuda makes runs after each test (fake_gpu)."""

import gc
import os
import tempfile
import warnings

import numpy as np
import onnxruntime as ort
import pytest

from edgekit.device.latency.backends import branch_of, feeds_for, merge_branches
from edgekit.device.latency.layers import layer_kinds, layer_onnx
from edgekit.device.runtime.registry import latency_backend
from edgekit.device.runtime.tensorrt import TensorRTRunner

CELLS = [(cin, cout) for cin in (8, 16, 24) for cout in (8, 16, 24, 32)]  # 12 cells: cell1 and cell11 both


def kind(shape):
    """ResNet-50's first kind of a shape: conv_relu, or conv_add_relu (conv3 with the residual input)."""
    residual = shape == "conv_add_relu"
    return next(k for k in layer_kinds(32) if k.op == "conv" and k.residual == residual
                and (k.post_act if residual else k.act) == "relu")


@pytest.fixture()
def device(fake_gpu, monkeypatch, tmp_path):
    """A fake Xavier, temp folders and the table cache under tmp_path; returns (world, backend factory)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tempfile.tempdir)
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))

    def make(version="8.5.2.2", **options):  # noqa: ANN202
        world = fake_gpu(version=version)
        options = dict(dict(precision="fp16", warmup=1, min_runs=3, min_seconds=0.0), **options)
        return world, latency_backend("tensorrt", **options)

    return make


def leftovers():
    return os.listdir(tempfile.tempdir)


def layer_sum_ms(model):
    """What the fake engine's GPU compute of `model` is: the sum of its layers' times."""
    import fake_trt

    return sum(ms for _, ms in fake_trt.layers_of(model, fp16=True))


def test_each_cell_times_gpu_compute_and_releases_its_runner_and_folder(device):
    world, backend = device()
    k = kind("conv_add_relu")
    ms = backend.time_layer(k, 16, 24, 1)
    # the launch alone: the fake's H2D (0.1 ms) and D2H (0.2 ms) copies are not in it, nor Python's time
    assert ms == pytest.approx(layer_sum_ms(layer_onnx(k, 16, 24, 1)), rel=1e-9)
    assert world.launches >= 3  # CUDA graph launches
    assert leftovers() == [] and world.stack() == []  # and fake_gpu's exit check: no context left pushed


def test_a_failing_cell_still_releases_its_runner_and_folder(device):
    from edgekit.errors import EdgekitError

    world, backend = device()
    world.last_error = 1  # a CUDA error pending: TensorRT's next enqueue fails
    with pytest.raises(EdgekitError, match="TensorRT failed to enqueue"):
        backend.time_layer(kind("conv_relu"), 8, 8, 1)
    assert leftovers() == [] and world.stack() == []


def test_a_timer_holds_no_context_between_windows_and_its_folder_goes_with_it(device):
    world, backend = device()
    model = layer_onnx(kind("conv_relu"), 8, 16, 1)
    window = backend.timer(model, feeds_for(model))
    first, second = window(), window()
    assert [first, second] == pytest.approx([layer_sum_ms(model)] * 2, rel=1e-9)
    assert world.stack() == [] and len(leftovers()) == 1 and len(world.builds) == 1  # built once
    del window
    gc.collect()
    assert leftovers() == []


def test_the_runner_times_device_resident_launches_and_infer_is_unchanged(fake_gpu, tmp_path):
    from test_trt_runner import _engine, _expected, _feed

    world = fake_gpu()
    with TensorRTRunner(_engine(tmp_path), cuda_graph=True) as runner:
        assert runner.time_compute(_feed(4), runs=5, warmup=2) == pytest.approx([1.0] * 5)  # the fake engine's 1 ms
        np.testing.assert_allclose(runner.infer(_feed(4))["logits"], _expected(4))
        assert runner.last_timings()["h2d"] == pytest.approx(1e-4) and runner.last_compute_time() == pytest.approx(1e-3)
    assert world.launches == 8


@pytest.mark.parametrize("version", ["8.5.2.2", "8.6.2"])
def test_a_kinds_cells_are_one_engine_and_each_gets_its_own_branchs_time(device, version):
    world, backend = device(version)
    k = kind("conv_add_relu")  # two inputs per cell
    merged = backend.time_cells(k, CELLS, 1)
    assert len(world.builds) == 1 and world.stack() == [] and leftovers() == []
    alone = [backend.time_layer(k, cin, cout, 1) for cin, cout in CELLS]
    # each cell's figure is its own: the fake's layers run in name order (cell10 before cell2) and
    # "cell1" is a prefix of "cell11", so a mapping by position or by substring gives other numbers
    assert merged == pytest.approx(alone, rel=1e-9)
    assert len(set(np.round(merged, 9))) == len(CELLS)


def test_a_layer_fused_across_branches_sends_those_cells_to_engines_of_their_own(device):
    world, backend = device()
    world.foreign_node = True  # the builder fuses the first two layers (of two branches) into one
    k = kind("conv_relu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = backend.time_cells(k, CELLS[:4], 1)
    assert len([w for w in caught if "timed alone" in str(w.message)]) == 2
    assert len(world.builds) == 1 + 2
    world.foreign_node = False
    assert merged == pytest.approx([backend.time_layer(k, cin, cout, 1) for cin, cout in CELLS[:4]], rel=1e-9)


def test_cells_beyond_the_memory_bound_go_to_a_second_engine(device):
    world, backend = device()
    k = kind("conv_relu")
    models = [layer_onnx(k, cin, cout, 1) for cin, cout in CELLS[:4]]
    from edgekit.device.latency.backends import _model_bytes

    backend.max_engine_bytes = sum(_model_bytes(m) for m in models[:2])
    merged = backend.time_cells(k, CELLS[:4], 1)
    assert len(world.builds) > 1  # an engine past the bound holds one cell
    assert all(_model_bytes(m) <= backend.max_engine_bytes or len(m.graph.output) == 1 for m in world.builds)
    assert merged == pytest.approx([layer_sum_ms(m) for m in models], rel=1e-9)


def test_the_merged_model_computes_each_cell_as_its_own_model_does():
    k = kind("conv_add_relu")
    models = {i: layer_onnx(k, cin, cout, 2) for i, (cin, cout) in enumerate(CELLS[:3])}
    merged = merge_branches(models)
    feeds = feeds_for(merged)
    got = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for i, model in models.items():
        own = {name: feeds["cell{}/{}".format(i, name)] for name in ("input", "residual")}
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, own)
        np.testing.assert_allclose(got[i], want[0], rtol=1e-5, atol=1e-6)


def test_layer_names_map_to_one_branch_or_none():
    assert branch_of("cell11/conv_3 + cell11/add_4 + cell11/relu_5") == 11
    assert branch_of("Reformatting CopyNode for Input Tensor 0 to cell1/conv_3 + cell1/relu_4") == 1
    assert branch_of("{ForeignNode[cell1/conv_3...cell2/relu_4]}") is None
    assert branch_of("xcell3/conv_1") is None and branch_of("conv_1") is None


def test_the_trtexec_line_pins_aux_streams_only_where_trtexec_has_the_flag(tmp_path):
    from edgekit.device.engine.builder import BuildConfig, trtexec_command

    path = tmp_path / "layer.fp32.onnx"
    path.write_bytes(layer_onnx(kind("conv_relu"), 8, 8, 1).SerializeToString())
    cfg = BuildConfig(str(path), precision="fp16", static_batch=1, max_aux_streams=0)
    assert "--maxAuxStreams=0" in trtexec_command(cfg, tensorrt_version="8.6.1")
    assert "maxAuxStreams" not in trtexec_command(cfg, tensorrt_version="8.5.2.2")  # 8.5: one stream, no flag
