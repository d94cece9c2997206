"""The TensorRT runner's bookkeeping on fakes of tensorrt / pycuda / cuda-python (tests/fake_trt.py):
CUDA graphs across batch sizes, capture failures, the CUDA context, the DLA core count, the
per-query split and the per-layer profile. The real thing runs in test_engine.py's tensorrt tier."""

import json
import sys
import types

import fake_trt
import numpy as np
import pytest

from edgekit.device.engine.metadata import EngineMetadata, save_metadata
from edgekit.device.runtime.tensorrt import TensorRTRunner, cudart_module, profile_report, slowest_layers
from edgekit.errors import EdgekitError


@pytest.fixture()
def engine(tmp_path):
    path = str(tmp_path / "model.fp16.gpu.engine")
    with open(path, "wb") as f:
        f.write(b"serialized")
    return path


def _feed(batch):
    return {"input": np.arange(batch * 4, dtype=np.float32).reshape(batch, 4)}


def _expected(batch):
    x = _feed(batch)["input"]
    return np.stack([x.sum(1), 2 * x[:, 0]], 1)


def test_cuda_graphs_survive_a_bigger_batch_then_a_smaller_one(monkeypatch, engine):
    world = fake_trt.install(monkeypatch)
    with TensorRTRunner(engine, check_metadata=False, cuda_graph=True) as runner:
        for batch in (1, 8, 1, 8, 1):
            # the old runner replayed batch 1's graph on the buffers batch 8 had freed
            out = runner.infer(_feed(batch))
            np.testing.assert_allclose(out["logits"], _expected(batch))
            assert world.calls[-1] != ("set_input_shape", None)
        # each replay set its own graph's shapes on the context just before its launch
        shapes = [c for c in world.calls if isinstance(c, tuple)]
        assert shapes[-1] == ("set_input_shape", (1, 4))
        assert world.capture_modes and set(world.capture_modes) == {"thread-local"}
        assert world.graph_execs_alive <= 2
    assert world.graph_execs_alive == 0


def test_a_failed_capture_ends_the_capture(monkeypatch, engine):
    world = fake_trt.install(monkeypatch)
    world.fail_enqueue_while_capturing = True
    with TensorRTRunner(engine, check_metadata=False, cuda_graph=True) as runner:
        with pytest.raises(EdgekitError, match="failed to enqueue"):
            runner.infer(_feed(2))
        assert world.capturing is None  # the stream is no longer capturing
        world.fail_enqueue_while_capturing = False
        np.testing.assert_allclose(runner.infer(_feed(2))["logits"], _expected(2))


def test_the_cuda_context_is_released_on_every_deactivate(monkeypatch, engine, tmp_path):
    world = fake_trt.install(monkeypatch, dla_cores=2)
    meta = EngineMetadata.create(tensorrt_version="8.5.2.2", device_name="Xavier", compute_capability="7.2",
                                 dla_core=1, precision="fp16", onnx_path="model.fp16.onnx", onnx_sha256="0" * 64)
    save_metadata(engine, meta)
    runner = TensorRTRunner(engine)
    for _ in range(3):
        with runner:
            runner.infer(_feed(1))
            assert len(world.context_stack) == 1
        assert world.context_stack == []
    assert world.contexts_alive == 0  # the old runner left one context alive per activation
    assert world.builders == 0  # the DLA core count came from the trt.Runtime, not a Builder per activation


def test_a_dla_engine_on_a_device_without_that_core_is_refused(monkeypatch, engine):
    fake_trt.install(monkeypatch, dla_cores=0)
    save_metadata(engine, EngineMetadata.create(tensorrt_version="8.5.2.2", device_name="Xavier",
                                                compute_capability="7.2", dla_core=0, precision="int8",
                                                onnx_path="model.fp32.onnx", onnx_sha256="0" * 64))
    with pytest.raises(EdgekitError, match="DLA"):
        TensorRTRunner(engine).activate()


def test_split_per_query_and_spin_wait(monkeypatch, engine):
    world = fake_trt.install(monkeypatch)
    with TensorRTRunner(engine, check_metadata=False, spin_wait=True) as runner:
        runner.infer(_feed(4))
        t = runner.last_timings()
    # the fake's clock: H2D 0.1 ms, compute 1 ms, D2H 0.2 ms
    assert t["h2d"] == pytest.approx(1e-4) and t["compute"] == pytest.approx(1e-3)
    assert t["d2h"] == pytest.approx(2e-4) and t["enqueue"] >= 0 and t["end_to_end"] > 0
    assert "event.query" in world.calls


def test_layer_profile_in_trtexec_layout(monkeypatch, engine, tmp_path):
    fake_trt.install(monkeypatch)
    with TensorRTRunner(engine, check_metadata=False) as runner:
        report = runner.profile_layers(_feed(1), runs=4)
    assert report[0] == {"count": 4}
    assert [r["name"] for r in report[1:]] == ["conv", "relu", "fc"]
    conv = report[1]
    assert conv["timeMs"] == pytest.approx(3.0) and conv["averageMs"] == pytest.approx(0.75)
    assert conv["medianMs"] == pytest.approx(0.75) and conv["percentage"] == pytest.approx(75.0)
    assert [r["name"] for r in slowest_layers(report, 2)] == ["conv", "fc"]
    json.dumps(report)
    assert profile_report({}, 1) == [{"count": 1}]


def test_cudart_comes_from_cuda_bindings_then_cuda_cudart(monkeypatch):
    new = types.ModuleType("cuda.bindings.runtime")
    for name in ("cuda", "cuda.bindings"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", new)
    assert cudart_module() is new
    # cuda-python 11.x (JetPack 5): only the old trampoline
    old = types.ModuleType("cuda.cudart")
    monkeypatch.delitem(sys.modules, "cuda.bindings.runtime")
    monkeypatch.delitem(sys.modules, "cuda.bindings")
    monkeypatch.setitem(sys.modules, "cuda.cudart", old)
    assert cudart_module() is old
    # neither: one clear line
    monkeypatch.delitem(sys.modules, "cuda.cudart")
    monkeypatch.setitem(sys.modules, "cuda", None)  # not importable, even where cuda-python is installed
    with pytest.raises(EdgekitError, match="cuda"):
        cudart_module()


def test_graphs_work_with_cuda_python_13_layout_only(monkeypatch, engine):
    world = fake_trt.install(monkeypatch, cudart_path="cuda.bindings.runtime")
    assert "cuda.cudart" not in sys.modules
    with TensorRTRunner(engine, check_metadata=False, cuda_graph=True) as runner:
        np.testing.assert_allclose(runner.infer(_feed(2))["logits"], _expected(2))
    assert world.capture_modes == ["thread-local"]


def test_torch_tensorrt_runner_compiles_a_copy_not_the_callers_model(monkeypatch):
    import torch

    from edgekit.host.models import resnet50
    from edgekit.host.torch_runners import TorchTensorRTRunner

    got = {}

    class Compiled(Exception):
        pass

    def compile(module, inputs, enabled_precisions):  # noqa: A001 - torch_tensorrt's name
        got["module"] = module
        raise Compiled()

    fake = types.ModuleType("torch_tensorrt")
    fake.compile, fake.Input = compile, lambda **kw: kw
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    model = resnet50(num_classes=10)
    runner = TorchTensorRTRunner(model, 32, precision="fp16")
    runner.device = "cpu"  # the conversion is what is under test, not CUDA
    with pytest.raises(Compiled):
        runner.activate()
    assert got["module"] is not model and next(got["module"].parameters()).dtype == torch.float16
    assert next(model.parameters()).dtype == torch.float32  # the old runner halved the caller's model
