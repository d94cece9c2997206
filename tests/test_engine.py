"""TensorRT engine building, metadata and DLA reports: everything that needs no GPU runs here;
the `tensorrt` tier builds and runs real engines on a device (`make test-device`)."""

import os
import subprocess

import numpy as np
import pytest
from conftest import REPO, edgekit_cmd
from onnx_fixtures import linear_classifier

from edgekit.artifacts import sha256_file
from edgekit.device.engine.api import TrtApi, parse_version
from edgekit.device.engine.builder import BuildConfig, check_build, plan_build, reusable_engine, trtexec_command
from edgekit.device.engine.dla_report import parse_dla_log, summarize
from edgekit.device.engine.metadata import EngineMetadata, check_compatible, load_metadata, save_metadata
from edgekit.errors import EdgekitError


def test_api_generations():
    xavier, orin, x86 = TrtApi("8.5.2.2"), TrtApi("8.6.2"), TrtApi("10.3.0")
    assert parse_version("8.5.2.2") == (8, 5, 2)
    assert xavier.explicit_batch_flag and not x86.explicit_batch_flag
    assert xavier.memory_pool_limit and x86.memory_pool_limit
    assert not xavier.builder_optimization_level and orin.builder_optimization_level
    # IParserError.node_name() arrived in 9.1: JetPack 6.0's 8.6.2 has only node()
    assert not xavier.parser_error_node_name and not orin.parser_error_node_name and x86.parser_error_node_name
    assert TrtApi("9.0.1").parser_error_node_name is False and TrtApi("9.1.0").parser_error_node_name is True
    assert not xavier.implicit_int8_deprecated and x86.implicit_int8_deprecated
    assert xavier.version_tag == "8502" and x86.version_tag == "100300"
    # TensorRT 9.1-9.3 still tag caches major*1000+minor*100+patch; x10000 starts at 10.0
    assert TrtApi("9.2.0").version_tag == "9200" and TrtApi("9.3.0.1").version_tag == "9300"
    with pytest.raises(EdgekitError, match="too old: edgekit needs 8.5"):
        TrtApi("8.2.1")


@pytest.fixture()
def models(tmp_path):
    for name in ("model.fp32.onnx", "model.fp16.onnx", "model.int8.qdq.onnx", "model.int8.cpu.onnx"):
        (tmp_path / name).write_bytes(b"onnx")
    (tmp_path / "calib.cache").write_text("TRT-8502-EntropyCalibration2\\ninput: 3c010a14\\n")
    return tmp_path


def test_build_plans_and_their_refusals(models):
    qdq, fp32 = str(models / "model.int8.qdq.onnx"), str(models / "model.fp32.onnx")
    fp16 = str(models / "model.fp16.onnx")
    calib = str(models / "calib.cache")
    assert check_build(BuildConfig(qdq, precision="int8")) == "int8-explicit"
    plan = plan_build(BuildConfig(fp32, precision="int8", dla_core=0, calibration_cache=calib), [3, 8, 8])
    assert {k: plan[k] for k in ("mode", "device", "engine_path")} == {
        "mode": "int8-implicit", "device": "dla0", "engine_path": str(models / "model.int8.dla0.b1.engine")}
    assert BuildConfig(fp16).engine_path == str(models / "model.fp16.gpu.engine")
    refusals = [
        (BuildConfig(str(models / "model.int8.cpu.onnx"), precision="int8"), "onnxruntime CPU flavour"),
        (BuildConfig(qdq, precision="int8", dla_core=0, calibration_cache=calib), "cannot take Q/DQ"),
        (BuildConfig(fp32, precision="int8", dla_core=1), "needs the calibration cache"),
        (BuildConfig(fp32, precision="int8"), "meaningless"),
        (BuildConfig(fp32, precision="fp32", dla_core=0), "DLA runs FP16 or INT8 only"),
        (BuildConfig(qdq, precision="fp16"), "build it with --precision int8"),
        (BuildConfig(fp16, min_batch=4, opt_batch=2), "min <= opt <= max"),
        (BuildConfig(fp32, precision="int8", dla_core=0, max_batch=8, calibration_cache=calib), "static batch"),
        (BuildConfig(fp16, dla_core=1, min_batch=1, opt_batch=4, max_batch=4), "pass --batch B"),
        (BuildConfig(str(models / "none.onnx")), "ONNX model not found"),
    ]
    for cfg, message in refusals:
        with pytest.raises(EdgekitError, match=message):
            check_build(cfg)


def test_trtexec_lines_for_xavier(models):
    qdq = str(models / "model.int8.qdq.onnx")
    gpu = trtexec_command(BuildConfig(qdq, precision="int8", max_batch=16, timing_cache="/data/timing.cache"),
                          [3, 224, 224], "8.5.2.2")
    # INT8 on the GPU: the API sets FP16 beside INT8, so the line says --fp16 too
    assert gpu == ("/usr/src/tensorrt/bin/trtexec --onnx={0}/model.int8.qdq.onnx "
                   "--saveEngine={0}/model.int8.gpu.engine "
                   "--minShapes=input:1x3x224x224 --optShapes=input:16x3x224x224 --maxShapes=input:16x3x224x224 "
                   "--int8 --fp16 --memPoolSize=workspace:1024 --timingCacheFile=/data/timing.cache "
                   "--verbose").format(models)
    dla = trtexec_command(BuildConfig(str(models / "model.fp32.onnx"), precision="int8", dla_core=0, static_batch=32,
                                      calibration_cache=str(models / "calib.cache")), [3, 32, 32], "8.5.2.2")
    assert dla == ("/usr/src/tensorrt/bin/trtexec --onnx={0}/model.fp32.onnx "
                   "--saveEngine={0}/model.int8.dla0.b32.engine --shapes=input:32x3x32x32 --int8 --fp16 "
                   "--calib={0}/calib.cache --useDLACore=0 --allowGPUFallback --memPoolSize=workspace:1024 "
                   "--verbose").format(models)


def _meta(**over):
    fields = dict(tensorrt_version="8.5.2.2", device_name="Xavier", compute_capability="7.2", dla_core=None,
                  precision="int8", onnx_path="model.int8.qdq.onnx", onnx_sha256="0" * 64)
    fields.update(over)
    return EngineMetadata.create(**fields)


def test_metadata_round_trip_and_compatibility(tmp_path):
    engine = str(tmp_path / "m.engine")
    save_metadata(engine, _meta())
    meta = load_metadata(engine)
    assert meta["schema"] == "edgekit.device.engine" and meta["compute_capability"] == "7.2" and meta["built_at"]
    check_compatible(meta, "8.5.2.2", "Xavier", "7.2", dla_cores=2)  # same place: fine
    expected = (r"built on Xavier \(compute 7\.2\) with TensorRT 8\.5\.2\.2, this is Orin \(compute 8\.7\) "
                r"with TensorRT 8\.6\.2.*rebuild it here: edgekit build-engine model\.int8\.qdq\.onnx")
    with pytest.raises(EdgekitError, match=expected):
        check_compatible(meta, "8.6.2", "Orin", "8.7", 2, engine)
    with pytest.raises(EdgekitError, match="tied to the GPU"):
        check_compatible(meta, "8.5.2.2", "Orin", "8.7", 2)
    with pytest.raises(EdgekitError, match="runs on DLA core 1 but this device has 0 DLA core"):
        check_compatible(_meta(dla_core=1), "8.5.2.2", "Xavier", "7.2", 0)
    with pytest.raises(EdgekitError, match="has no metadata"):
        load_metadata(str(tmp_path / "other.engine"))


def test_an_engine_from_the_same_onnx_and_settings_is_reused(tmp_path):
    onnx_path = str(tmp_path / "model.fp16.onnx")
    linear_classifier(onnx_path)
    cfg = BuildConfig(onnx_path, precision="fp16", max_batch=32)
    assert reusable_engine(cfg, "8.5.2.2") is None  # nothing built yet
    with open(cfg.engine_path, "wb") as f:
        f.write(b"serialized")
    assert reusable_engine(cfg, "8.5.2.2") is None  # an engine without metadata is not trusted
    meta = _meta(dla_core=None, precision="fp16", onnx_sha256=sha256_file(onnx_path),
                 profile={"input": "input", "min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [32, 3, 8, 8]})
    save_metadata(cfg.engine_path, meta)
    assert reusable_engine(cfg, "8.5.2.2") is None  # tuned for batch 1: rebuilt with opt = the max
    meta["profile"]["opt"] = [32, 3, 8, 8]
    save_metadata(cfg.engine_path, meta)
    assert reusable_engine(cfg, "8.5.2.2")["onnx_sha256"] == meta["onnx_sha256"]
    assert reusable_engine(cfg, "8.6.2") is None  # another TensorRT
    assert reusable_engine(BuildConfig(onnx_path, precision="fp16", max_batch=8), "8.5.2.2") is None
    assert reusable_engine(BuildConfig(onnx_path, engine_path=cfg.engine_path, precision="int8", max_batch=32),
                           "8.5.2.2") is None
    # DLA INT8: the calibration cache is part of what was built
    calib = tmp_path / "calib.cache"
    calib.write_text("TRT-8502-EntropyCalibration2\ninput: 3c010a14\n")
    dla = BuildConfig(onnx_path, precision="int8", dla_core=0, static_batch=32, calibration_cache=str(calib))
    with open(dla.engine_path, "wb") as f:
        f.write(b"serialized")
    save_metadata(dla.engine_path, _meta(dla_core=0, precision="int8", onnx_sha256=sha256_file(onnx_path),
                                         profile={"input": "input", "min": [32, 3, 8, 8], "opt": [32, 3, 8, 8],
                                                  "max": [32, 3, 8, 8]}, flags={"gpu_fallback": True,
                                                                         "calibration_cache_sha256": sha256_file(
                                                                             str(calib))}))
    assert reusable_engine(dla, "8.5.2.2") is not None
    calib.write_text("TRT-8502-EntropyCalibration2\ninput: 3c020a14\n")  # recalibrated
    assert reusable_engine(dla, "8.5.2.2") is None
    linear_classifier(onnx_path, seed=1)  # the model changed
    assert reusable_engine(cfg, "8.5.2.2") is None


# Laid out as TensorRT prints them: 8.0-8.4 (braced subgraphs) and 8.5+ ([DlaLayer]/[GpuLayer]).
LOG_84 = """\
[11/25/2026-10:00:01] [W] [TRT] Default DLA is enabled but layer /fc/Gemm is not supported on DLA, \
falling back to GPU.
[11/25/2026-10:00:01] [W] [TRT] /Flatten: DLA only supports flattening of the spatial dimensions.
[11/25/2026-10:00:01] [W] [TRT] Default DLA is enabled but layer /Flatten is not supported on DLA, \
falling back to GPU.
[11/25/2026-10:00:02] [I] [TRT] --------------- Layers running on DLA:
[11/25/2026-10:00:02] [I] [TRT] {/conv1/Conv,/relu/Relu,/maxpool/MaxPool,/layer1/layer1.0/conv1/Conv}, \
{/layer4/layer4.2/relu_2/Relu,/avgpool/GlobalAveragePool},
[11/25/2026-10:00:02] [I] [TRT] --------------- Layers running on GPU:
[11/25/2026-10:00:02] [I] [TRT] /Flatten, /fc/Gemm,
[11/25/2026-10:00:03] [I] [TRT] Total Activation Memory: 12345
"""
LOG_85 = """\
[W] [TRT] Layer '/avgpool/GlobalAveragePool' (REDUCE): Unsupported on DLA. Switching this layer's device type \
to GPU.
[W] [TRT] DLA supports only 16 subgraphs per DLA core. Switching to GPU for layer /layer4/layer4.2/conv3/Conv
[I] [TRT] ---------- Layers Running on DLA ----------
[I] [TRT] [DlaLayer] {ForeignNode[/conv1/Conv.../layer4/layer4.2/relu_2/Relu]}
[I] [TRT] ---------- Layers Running on GPU ----------
[I] [TRT] [GpuLayer] REDUCE: /avgpool/GlobalAveragePool
[I] [TRT] [GpuLayer] SHUFFLE: /Flatten
[I] [TRT] [GpuLayer] CONVOLUTION: /fc/Gemm
[I] [TRT] Engine generation completed in 42.1 seconds.
"""


def test_dla_report_both_log_formats():
    old = parse_dla_log(LOG_84)
    assert old["dla"] == ["{/conv1/Conv,/relu/Relu,/maxpool/MaxPool,/layer1/layer1.0/conv1/Conv}",
                          "{/layer4/layer4.2/relu_2/Relu,/avgpool/GlobalAveragePool}"]
    assert old["gpu"] == ["/Flatten", "/fc/Gemm"]
    assert old["fallbacks"] == {"/fc/Gemm": "not supported on DLA",
                                "/Flatten": "DLA only supports flattening of the spatial dimensions"}
    new = parse_dla_log(LOG_85)
    assert new["dla"] == ["{ForeignNode[/conv1/Conv.../layer4/layer4.2/relu_2/Relu]}"]
    assert new["gpu"] == ["REDUCE: /avgpool/GlobalAveragePool", "SHUFFLE: /Flatten", "CONVOLUTION: /fc/Gemm"]
    assert new["fallbacks"]["/avgpool/GlobalAveragePool"] == "Unsupported on DLA"
    assert new["fallbacks"]["/layer4/layer4.2/conv3/Conv"] == "DLA supports only 16 subgraphs per DLA core"
    text = summarize(new)
    assert text.splitlines()[0] == "DLA: 1 subgraph(s)/layer(s); GPU: 3 layer(s); 2 fell back from DLA"


def test_build_engine_without_tensorrt_is_one_clear_line(tmp_path):
    path = tmp_path / "model.fp16.onnx"
    linear_classifier(path)
    proc = subprocess.run(edgekit_cmd("build-engine", str(path)), capture_output=True, text=True, cwd=REPO)
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the build runs for real in the tensorrt tier")
    except ImportError:
        pass
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "edgekit: error: tensorrt is not installed: on JetPack it comes with the system Python (sudo apt install "
        "python3-libnvinfer); elsewhere run in the Jetson image (docker/jetson)"]
    line = subprocess.run(edgekit_cmd("build-engine", str(path), "--print-trtexec", "--input-shape", "3x8x8"),
                          capture_output=True, text=True, cwd=REPO)
    assert line.returncode == 0 and "--minShapes=input:1x3x8x8" in line.stdout and "--fp16" in line.stdout


@pytest.mark.tensorrt
def test_engine_output_matches_onnxruntime(tmp_path):
    from edgekit.device.engine.builder import build_engine
    from edgekit.device.runtime import OnnxRuntimeRunner
    from edgekit.device.runtime.tensorrt import TensorRTRunner

    onnx_path = tmp_path / "model.fp32.onnx"
    linear_classifier(onnx_path)
    meta = build_engine(BuildConfig(str(onnx_path), precision="fp32", max_batch=4,
                                    timing_cache=str(tmp_path / "timing.cache")), log=lambda m: None)
    engine = str(tmp_path / "model.fp32.gpu.engine")
    assert os.path.exists(engine) and os.path.exists(engine + ".log") and meta["precision"] == "fp32"
    assert os.path.exists(str(tmp_path / "timing.cache"))
    feed = {"input": np.random.RandomState(0).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    with TensorRTRunner(engine) as trt_runner, OnnxRuntimeRunner(str(onnx_path)) as ort_runner:
        got, want = trt_runner.infer(feed), ort_runner.infer(feed)
        assert trt_runner.last_compute_time() is not None
    np.testing.assert_allclose(got["output"], want["output"], rtol=1e-3, atol=1e-3)
    one = {"input": feed["input"][:1]}
    with TensorRTRunner(engine, cuda_graph=True) as graphed:
        first, again = graphed.infer(one), graphed.infer(one)  # capture, then replay
    np.testing.assert_allclose(first["output"], want["output"][:1], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(again["output"], first["output"])


@pytest.mark.tensorrt
def test_cuda_graph_across_batches_one_eight_one(tmp_path):
    """Graphs captured at batch 1, then batch 8 reallocates every buffer, then batch 1 again: the
    replay must read the new buffers (issue 12, defect 2), with the split and the profiler real."""
    from edgekit.device.engine.builder import build_engine
    from edgekit.device.runtime import OnnxRuntimeRunner
    from edgekit.device.runtime.tensorrt import TensorRTRunner

    onnx_path = tmp_path / "model.fp32.onnx"
    linear_classifier(onnx_path)
    build_engine(BuildConfig(str(onnx_path), precision="fp32", max_batch=8), log=lambda m: None)
    engine = str(tmp_path / "model.fp32.gpu.engine")
    rng = np.random.RandomState(1)
    with TensorRTRunner(engine, cuda_graph=True, spin_wait=True) as graphed, \
            OnnxRuntimeRunner(str(onnx_path)) as reference:
        for batch in (1, 8, 1, 8):
            feed = {"input": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)}
            np.testing.assert_allclose(graphed.infer(feed)["output"], reference.infer(feed)["output"],
                                       rtol=1e-3, atol=1e-3)
            split = graphed.last_timings()
            assert all(split[k] >= 0 for k in ("enqueue", "h2d", "compute", "d2h"))
        report = graphed.profile_layers(feed, runs=3)
    assert report[0] == {"count": 3} and len(report) > 1 and all("averageMs" in r for r in report[1:])


@pytest.mark.tensorrt
def test_int8_engines_for_the_gpu_and_a_static_dla_batch(tmp_path):
    """GPU INT8 from Q/DQ; DLA INT8 from the FP32 model and calib.cache at one static batch (skipped
    where the device has no DLA). The metadata keeps the plan the build followed."""
    from edgekit.device.engine.builder import build_engine
    from edgekit.device.engine.calibcache import format_cache
    from edgekit.device.engine.device import dla_cores
    from edgekit.host.compress.quantize import quantize

    fp32 = str(tmp_path / "model.fp32.onnx")
    linear_classifier(fp32)
    calibration = [np.random.RandomState(0).standard_normal((4, 3, 8, 8)).astype(np.float32)]
    import tensorrt

    quantize(fp32, str(tmp_path), calibration, trt_version=tensorrt.__version__)
    gpu = build_engine(BuildConfig(str(tmp_path / "model.int8.qdq.onnx"), precision="int8"), log=lambda m: None)
    assert gpu["plan"]["flags"] == ["INT8", "FP16"]
    if dla_cores() == 0:
        pytest.skip("no DLA on this device: the GPU INT8 engine was built; the DLA one needs a Jetson")
    cache = tmp_path / "calib.cache"
    assert cache.read_text().startswith(format_cache({}, tensorrt.__version__))
    dla = build_engine(BuildConfig(fp32, precision="int8", dla_core=0, static_batch=2, calibration_cache=str(cache)),
                       log=lambda m: None)
    assert dla["profile"]["min"] == dla["profile"]["opt"] == dla["profile"]["max"] == [2, 3, 8, 8]
    assert dla["plan"]["calibrator"]["class"] == "IInt8EntropyCalibrator2"
    assert not dla["dla_report"].get("dynamic_shapes")


@pytest.mark.gpu
def test_pruned_student_is_faster_on_the_gpu_in_fp16():
    """Evidence for how pruning translates to GPU time (PyTorch FP16, batch 1, 224x224)."""
    import time

    import torch

    from edgekit.host.compress.prune import prune
    from edgekit.host.models import count_macs_params, resnet50

    dense = resnet50(num_classes=10).eval()
    macs, _ = count_macs_params(dense, 224)
    pruned = prune(dense, macs // 4, 224, log=lambda m: None).model
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.half)

    def p50(model):
        model = model.cuda().half()
        times = []
        with torch.inference_mode():
            for i in range(60):
                torch.cuda.synchronize()
                start = time.perf_counter()
                model(x)
                torch.cuda.synchronize()
                if i >= 10:
                    times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    assert p50(pruned) < p50(dense)


def test_torch_tensorrt_runner_says_what_to_install():
    from edgekit.host.models import resnet50
    from edgekit.host.torch_runners import TorchTensorRTRunner

    try:
        import torch_tensorrt  # noqa: F401
        pytest.skip("torch-tensorrt is installed: the gpu tier compiles for real")
    except ImportError:
        pass
    with pytest.raises(EdgekitError, match=r"^torch_tensorrt is not installed: \S+ -m pip install torch-tensorrt"):
        TorchTensorRTRunner(resnet50(num_classes=10), 32).activate()


@pytest.mark.gpu
def test_torch_tensorrt_runner_matches_eager():
    pytest.importorskip("torch_tensorrt", reason="torch-tensorrt is not installed on this GPU host")
    from edgekit.host.models import resnet50
    from edgekit.host.torch_runners import TorchEagerRunner, TorchTensorRTRunner

    model = resnet50(num_classes=10).eval()
    feed = {"input": np.random.RandomState(0).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    with TorchEagerRunner(model, 64) as eager:
        want = eager.infer(feed)["logits"]
    with TorchTensorRTRunner(model, 64, precision="fp32") as compiled:
        got = compiled.infer(feed)["logits"]
        assert compiled.last_compute_time() is not None
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
