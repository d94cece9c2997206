"""The TensorRT runner on strict fakes of tensorrt 8.5, pycuda and cuda-python (tests/fake_trt.py,
tests/fake_cuda.py): optimization profiles, one context per profile, per-thread CUDA contexts, async
copies and events, CUDA graphs and their failures, the per-layer profile. Every test ends with the exit
check pycuda makes (fake_gpu). The real thing runs in test_engine.py's tensorrt tier."""

import importlib
import json
import sys
import types

import numpy as np
import pytest

from edgekit.device.bench.harness import benchmark, benchmark_concurrent
from edgekit.device.engine.metadata import EngineMetadata, save_metadata
from edgekit.device.runtime.tensorrt import TensorRTRunner, cudart_module, profile_report, slowest_layers
from edgekit.errors import EdgekitError

FAST = dict(warmup=2, min_queries=5, min_seconds=0.0, idle_seconds=0, progress=False, power=False,
            log=lambda message: None)


def _engine(folder, name="model.fp16.gpu.engine", dla_core=None):
    path = str(folder / name)
    with open(path, "wb") as f:
        f.write(b"serialized")
    save_metadata(path, EngineMetadata.create(tensorrt_version="8.5.2.2", device_name="Xavier",
                                              compute_capability="7.2", dla_core=dla_core, precision="fp16",
                                              onnx_path="model.fp16.onnx", onnx_sha256="0" * 64))
    return path


@pytest.fixture()
def engine(tmp_path):
    return _engine(tmp_path)


def _feed(batch):
    return {"input": np.arange(batch * 4, dtype=np.float32).reshape(batch, 4)}


def _expected(batch):
    x = _feed(batch)["input"]
    return np.stack([x.sum(1), 2 * x[:, 0]], 1)


def test_cuda_graphs_survive_a_bigger_batch_then_a_smaller_one(fake_gpu, engine):
    world = fake_gpu()
    with TensorRTRunner(engine, cuda_graph=True) as runner:
        for batch in (1, 8, 1, 8, 1):
            # the old runner replayed batch 1's graph on the buffers batch 8 had freed
            np.testing.assert_allclose(runner.infer(_feed(batch))["logits"], _expected(batch))
        assert world.launches == 5 and set(world.capture_modes) == {world_mode("ThreadLocal")}
        assert world.alive["graph_exec"] <= 2
    assert world.alive["graph_exec"] == 0


def world_mode(name):
    from fake_cuda import cudaStreamCaptureMode

    return getattr(cudaStreamCaptureMode, "cudaStreamCaptureMode" + name)


def test_a_failed_capture_warns_and_that_shape_runs_without_a_graph(fake_gpu, engine):
    world = fake_gpu()
    world.fail_enqueue_while_capturing = True
    with TensorRTRunner(engine, cuda_graph=True) as runner:
        with pytest.warns(RuntimeWarning, match="CUDA graph capture failed.*without a graph"):
            out = runner.infer(_feed(2))
        np.testing.assert_allclose(out["logits"], _expected(2))  # the old runner raised here
        np.testing.assert_allclose(runner.infer(_feed(2))["logits"], _expected(2))  # no second capture
        assert world.capturing == {} and world.last_error == 0 and world.launches == 0
        world.fail_enqueue_while_capturing = False
        np.testing.assert_allclose(runner.infer(_feed(4))["logits"], _expected(4))  # another shape captures
        assert world.launches == 1


def test_the_cuda_context_stream_and_events_are_released_on_every_deactivate(fake_gpu, tmp_path):
    import gc

    world = fake_gpu(dla_cores=2)
    runner = TensorRTRunner(_engine(tmp_path, "model.fp16.dla1.b1.engine", dla_core=1))
    for _ in range(3):
        with runner:
            runner.infer(_feed(1))
            assert len(world.stack()) == 1
        gc.collect()
        assert world.stack() == [] and world.alive["stream"] == 0 and world.alive["event"] == 0
    assert world.primary.refs == 0  # the old runner left one context alive per activation
    assert world.builders == 0  # the DLA core count came from the trt.Runtime, not a Builder per activation


def test_a_dla_engine_on_a_device_without_that_core_is_refused(fake_gpu, tmp_path):
    fake_gpu(dla_cores=0)
    with pytest.raises(EdgekitError, match="DLA"):
        TensorRTRunner(_engine(tmp_path, "m.int8.dla0.b1.engine", dla_core=0)).activate()


def test_split_per_query_from_blocking_sync_events_by_default(fake_gpu, engine):
    world = fake_gpu()
    with TensorRTRunner(engine) as runner:
        out = runner.infer(_feed(4))
        t = runner.last_timings()
    # trtexec's default: wait on a blocking-sync event (the host sleeps), no polling
    assert "event.synchronize:blocking" in world.calls and "event.query" not in world.calls
    assert "stream.synchronize" not in world.calls
    np.testing.assert_allclose(out["logits"], _expected(4))  # the D2H copy ran before the host read it
    # the fake device's clock: H2D 0.1 ms, compute 1 ms, D2H 0.2 ms
    assert t["h2d"] == pytest.approx(1e-4) and t["compute"] == pytest.approx(1e-3) and t["d2h"] == pytest.approx(2e-4)
    assert t["enqueue"] >= 0 and t["end_to_end"] > 0 and t["start"] <= t["enqueue_start"]


def test_spin_wait_uses_plain_events_waited_in_the_driver_not_a_python_loop(fake_gpu, engine):
    world = fake_gpu()
    with TensorRTRunner(engine, spin_wait=True) as runner:
        runner.infer(_feed(1))
        assert runner.runtime_info()["sync"] == "spin-wait"
    assert "event.synchronize:spin" in world.calls and "event.query" not in world.calls


def test_a_batch_outside_the_profile_is_refused_not_run_at_the_old_shape(fake_gpu, engine):
    world = fake_gpu(profile=((1, 4), (4, 4), (8, 4)))
    with TensorRTRunner(engine) as runner:
        runner.infer(_feed(8))
        with pytest.raises(EdgekitError, match=r"input input of shape \[16, 4\] is outside the optimization profile"):
            runner.check_feed(_feed(16))
        with pytest.raises(EdgekitError, match="TensorRT refused input input of shape"):
            runner.infer(_feed(16), check=False)  # the old runner ran batch 8's shape and counted it as 16
    assert any("outside profile 0" in message for _, message in world.log)


def test_a_sweep_past_the_engines_max_batch_fails_before_anything_is_timed(fake_gpu, engine):
    world = fake_gpu(profile=((1, 4), (4, 4), (8, 4)))
    with pytest.raises(EdgekitError, match=r"shape \[16, 4\] is outside the optimization profile.*--max-batch 16"):
        benchmark(engine, None, batches=[1, 8, 16], **FAST)
    assert world.clock_ms == 0.0  # not one query ran on the device


def test_export_profile_uses_the_runners_context_after_a_warm_up_and_keeps_the_run(fake_gpu, engine, tmp_path):
    """The old profiler opened a second context on this one-profile engine: TensorRT 8.5 refuses it, and
    the run failed after every window was measured, before its result was saved."""
    fake_gpu()
    out = str(tmp_path / "r.json")
    result = benchmark(engine, out, batches=[1, 8], export_profile_path=str(tmp_path / "profile.json"), **FAST)
    report = json.load(open(str(tmp_path / "profile.json")))
    assert report[0] == {"count": 10} and [r["name"] for r in report[1:]] == ["conv", "relu", "fc"]
    assert result["profile"]["slowest"][0]["name"] == "conv"
    assert json.load(open(out))["profile"]["runs"] == 10


def test_a_profile_of_a_fresh_runner_excludes_its_cold_first_runs(fake_gpu, engine):
    fake_gpu()
    with TensorRTRunner(engine) as runner:
        report = runner.profile_layers(_feed(1), runs=4)
        assert runner.context.profiler is None  # timed queries after it carry no profiler
    conv = report[1]
    # a cold first run is 10x slower in the fake; the warm-up keeps it out
    assert conv["timeMs"] == pytest.approx(3.0) and conv["averageMs"] == pytest.approx(0.75)
    assert conv["medianMs"] == pytest.approx(0.75) and conv["percentage"] == pytest.approx(75.0)
    assert [r["name"] for r in slowest_layers(report, 2)] == ["conv", "fc"]
    assert profile_report({}, 1) == [{"count": 1}]


def test_concurrent_tensorrt_runners_make_the_context_current_in_each_worker(fake_gpu, tmp_path):
    """pycuda's context stack is per thread: the old harness ran each engine in a worker thread with no
    current context, and the first CUDA call there failed."""
    world = fake_gpu()
    gpu, dla = _engine(tmp_path, "a.fp16.gpu.engine"), _engine(tmp_path, "b.fp16.gpu.engine")
    result = benchmark_concurrent([gpu, dla], None, batch=2, warmup=1, min_seconds=0.05, power=False,
                                  idle_seconds=0, progress=False, log=lambda message: None)
    engines = result["scenarios"]["concurrent_offline"]["engines"]
    assert all(e["queries"] > 0 for e in engines)
    assert [name for name, stack in world.stacks.values() if stack] == []


def test_cudart_is_resolved_once_not_in_every_graph_launch(fake_gpu, engine, monkeypatch):
    fake_gpu()
    imports = []
    real = importlib.import_module

    def counting(name, *args):
        imports.append(name)
        return real(name, *args)

    with TensorRTRunner(engine, cuda_graph=True) as runner:
        runner.infer(_feed(1))
        monkeypatch.setattr(importlib, "import_module", counting)
        for _ in range(20):
            runner.infer(_feed(1), check=False)
    assert [name for name in imports if name.startswith("cuda")] == []  # the old runner imported it 20 times


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


def test_graphs_work_with_the_cuda_python_11_layout_too(fake_gpu, engine, monkeypatch):
    for name in ("cuda.bindings", "cuda.bindings.runtime"):  # JetPack 5's cuda-python has no cuda.bindings
        monkeypatch.setitem(sys.modules, name, None)
    world = fake_gpu(cudart_path="cuda.cudart")
    with TensorRTRunner(engine, cuda_graph=True) as runner:
        np.testing.assert_allclose(runner.infer(_feed(2))["logits"], _expected(2))
    assert world.launches == 1


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
