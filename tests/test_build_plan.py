"""One build plan for the API build and the trtexec line, tested with a fake `tensorrt` that records what
build_engine asks of it and refuses what the version refuses (enums with their real names only; no
builder_optimization_level before 8.6). The real build is test_engine.py's tensorrt tier."""

import enum
import json
import subprocess
import sys
import types

import pytest
from conftest import REPO, edgekit_cmd
from onnx_fixtures import linear_classifier

from edgekit.device.engine.api import TrtApi
from edgekit.device.engine.builder import BuildConfig, build_engine, plan_build, trtexec_args, trtexec_command
from edgekit.device.engine.calibcache import format_cache
from edgekit.device.engine.dla_report import parse_dla_log, summarize
from edgekit.errors import EdgekitError


class Recorder(object):
    def __init__(self) -> None:
        self.flags, self.profiles, self.config = [], [], None


def fake_tensorrt(version, rec, parse_ok=True, error_has_node_name=True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class ILogger(object):
        Severity = enum.Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")

        def __init__(self) -> None:
            pass

    class IInt8EntropyCalibrator2(object):
        def __init__(self) -> None:
            pass

    class IInt8MinMaxCalibrator(IInt8EntropyCalibrator2.__base__):  # a sibling, never the DLA one
        def __init__(self) -> None:
            pass

    class Tensor(object):
        name, shape = "input", (-1, 3, 8, 8)

    class Network(object):
        def get_input(self, i):  # noqa: ANN001, ANN201
            return Tensor()

    class ParserError(object):
        def node(self):  # noqa: ANN201
            return 3

        def desc(self):  # noqa: ANN201
            return "unsupported op Foo"

    if error_has_node_name:
        ParserError.node_name = lambda self: "/foo/Foo"

    class OnnxParser(object):
        num_errors = 1

        def __init__(self, network, logger) -> None:  # noqa: ANN001
            pass

        def parse(self, data, path=None):  # noqa: ANN001, ANN201
            return parse_ok

        def get_error(self, i):  # noqa: ANN001, ANN201
            return ParserError()

    class Profile(object):
        def set_shape(self, name, low, opt, high):  # noqa: ANN001, ANN201
            rec.profiles.append((name, list(low), list(opt), list(high)))

    class Config(object):
        settable = {"int8_calibrator", "profiling_verbosity", "default_device_type", "DLA_core"}
        if tuple(int(v) for v in version.split(".")[:2]) >= (8, 6):
            settable.add("builder_optimization_level")  # IBuilderConfig has it from 8.6

        def __setattr__(self, name, value):  # noqa: ANN001
            if name not in self.settable:
                raise AttributeError("IBuilderConfig has no attribute {!r} in TensorRT {}".format(name, version))
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, pool_size):  # noqa: ANN001, ANN201
            assert pool is trt.MemoryPoolType.WORKSPACE
            rec.workspace = pool_size

        def set_flag(self, flag):  # noqa: ANN001, ANN201
            rec.flags.append(flag.name)

        def add_optimization_profile(self, profile):  # noqa: ANN001, ANN201
            pass

        def create_timing_cache(self, data):  # noqa: ANN001, ANN201
            return object()

        def set_timing_cache(self, cache, ignore_mismatch):  # noqa: ANN001, ANN201
            pass

    class Builder(object):
        def __init__(self, logger) -> None:  # noqa: ANN001
            pass

        def create_network(self, flags):  # noqa: ANN001, ANN201
            return Network()

        def create_builder_config(self):  # noqa: ANN201
            rec.config = Config()
            return rec.config

        def create_optimization_profile(self):  # noqa: ANN201
            return Profile()

        def build_serialized_network(self, network, config):  # noqa: ANN001, ANN201
            return None  # stop here: what was configured is what is under test

    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    trt.IInt8EntropyCalibrator2, trt.IInt8MinMaxCalibrator = IInt8EntropyCalibrator2, IInt8MinMaxCalibrator
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", start=0)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE DLA_MANAGED_SRAM DLA_LOCAL_DRAM DLA_GLOBAL_DRAM")
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY NONE DETAILED")
    trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 "
                                "SPARSE_WEIGHTS SAFETY_SCOPE OBEY_PRECISION_CONSTRAINTS PREFER_PRECISION_CONSTRAINTS "
                                "DIRECT_IO REJECT_EMPTY_ALGORITHMS")
    trt.DeviceType = enum.Enum("DeviceType", "GPU DLA")
    return trt


@pytest.fixture()
def onnx_dir(tmp_path):
    linear_classifier(str(tmp_path / "model.fp32.onnx"))
    linear_classifier(str(tmp_path / "model.int8.qdq.onnx"))
    return tmp_path


def _build(monkeypatch, cfg, version="8.5.2.2", **fake):
    rec = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, rec, **fake))
    with pytest.raises(EdgekitError) as err:
        build_engine(cfg, log=lambda message: None)
    return rec, str(err.value)


def test_dla_int8_builds_a_static_profile_with_the_entropy_calibrator(monkeypatch, onnx_dir):
    cache = onnx_dir / "calib.cache"
    cache.write_text(format_cache({"input": 0.01}, "8.5.2"))
    cfg = BuildConfig(str(onnx_dir / "model.fp32.onnx"), precision="int8", dla_core=0, static_batch=8,
                      calibration_cache=str(cache))
    rec, error = _build(monkeypatch, cfg)
    assert "could not build" in error
    assert rec.profiles == [("input", [8, 3, 8, 8], [8, 3, 8, 8], [8, 3, 8, 8])]  # never 1/1/8 on DLA
    assert rec.flags == ["INT8", "FP16", "GPU_FALLBACK"]
    calibrator = rec.config.int8_calibrator
    trt = sys.modules["tensorrt"]
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2)
    assert calibrator.read_calibration_cache().startswith(b"TRT-8502-EntropyCalibration2\n")
    assert rec.config.default_device_type is trt.DeviceType.DLA and rec.config.DLA_core == 0


def test_a_cache_tensorrt_would_skip_is_refused(monkeypatch, onnx_dir):
    cache = onnx_dir / "calib.cache"
    cfg = BuildConfig(str(onnx_dir / "model.fp32.onnx"), precision="int8", dla_core=1, calibration_cache=str(cache))
    # a MinMax header: the old builder served it through IInt8MinMaxCalibrator, which DLA does not take
    cache.write_text(format_cache({"input": 0.01}, "8.5.2", algorithm="MinMaxCalibration"))
    _, error = _build(monkeypatch, cfg)
    assert "TRT-8502-MinMaxCalibration" in error and "TRT-8502-EntropyCalibration2" in error
    # TensorRT 10.3 reads TRT-100300 headers only
    cache.write_text(format_cache({"input": 0.01}, "8.5.2"))
    _, error = _build(monkeypatch, cfg, version="10.3.0")
    assert "TRT-100300-EntropyCalibration2" in error


def test_gpu_int8_sets_fp16_in_the_api_and_the_trtexec_line(monkeypatch, onnx_dir):
    cfg = BuildConfig(str(onnx_dir / "model.int8.qdq.onnx"), precision="int8")
    rec, _ = _build(monkeypatch, cfg)
    plan = plan_build(cfg)
    assert rec.flags == plan["flags"] == ["INT8", "FP16"] and plan["calibrator"] is None
    line = trtexec_args(plan, TrtApi("8.5.2"))
    assert "--int8" in line and "--fp16" in line
    # opt = max without --opt-batch: kernels tuned for the batch Offline measures most, not for batch 1
    assert rec.profiles == [("input", [1, 3, 8, 8], [8, 3, 8, 8], [8, 3, 8, 8])]
    assert "--optShapes=input:8x3x8x8" in line


def test_the_optimization_level_is_set_and_printed_only_where_tensorrt_has_it(monkeypatch, onnx_dir):
    cfg = BuildConfig(str(onnx_dir / "model.fp32.onnx"), precision="fp16", optimization_level=4)
    rec, error = _build(monkeypatch, cfg, version="8.5.2.2")  # 8.5's IBuilderConfig has no such attribute
    assert "could not build" in error
    assert "--builderOptimizationLevel" not in trtexec_command(cfg, [3, 8, 8], "8.5.2.2")  # trtexec 8.5 lacks it
    rec, _ = _build(monkeypatch, cfg, version="8.6.2")
    assert rec.config.builder_optimization_level == 4
    assert "--builderOptimizationLevel=4" in trtexec_command(cfg, [3, 8, 8], "8.6.2")
    assert "--builderOptimizationLevel=4" in trtexec_command(cfg, [3, 8, 8], "10.3.0")


def test_parser_errors_on_8_6_use_the_node_index(monkeypatch, onnx_dir):
    cfg = BuildConfig(str(onnx_dir / "model.fp32.onnx"), precision="fp16")
    # 8.6 has no IParserError.node_name(): the old builder raised AttributeError here
    _, error = _build(monkeypatch, cfg, version="8.6.2", parse_ok=False, error_has_node_name=False)
    assert "cannot parse" in error and "node #3: unsupported op Foo" in error
    _, error = _build(monkeypatch, cfg, version="10.3.0", parse_ok=False)
    assert "/foo/Foo: unsupported op Foo" in error


def test_print_plan_and_trtexec_agree_without_tensorrt(onnx_dir):
    cache = onnx_dir / "calib.cache"
    cache.write_text(format_cache({"input": 0.01}, "8.5.2"))
    args = [str(onnx_dir / "model.fp32.onnx"), "--precision", "int8", "--dla", "0", "--calib", str(cache)]
    proc = subprocess.run(edgekit_cmd("build-engine", *args, "--print-plan"), capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    for profile in plan["profiles"]:
        assert profile["min"] == profile["opt"] == profile["max"] == [1, 3, 8, 8]
    assert plan["calibrator"]["class"] == "IInt8EntropyCalibrator2"
    assert plan["calibrator"]["cache_header"] == "TRT-8502-EntropyCalibration2"
    assert plan["device"] == "dla0" and plan["dla_core"] == 0 and plan["workspace_mb"] == 1024
    line = subprocess.run(edgekit_cmd("build-engine", *args, "--print-trtexec"), capture_output=True, text=True,
                          cwd=REPO).stdout
    assert ("--fp16" in line) == ("FP16" in plan["flags"]) and "--shapes=input:1x3x8x8" in line
    assert "--minShapes" not in line
    bad = subprocess.run(edgekit_cmd("build-engine", *args, "--max-batch", "8", "--print-plan"), capture_output=True,
                         text=True, cwd=REPO)
    assert bad.returncode == 2 and "static batch" in bad.stderr and "Traceback" not in bad.stderr


def test_the_dla_report_names_a_dynamic_profile():
    log = "\n".join([
        "[W] [TRT] DLA Layer /conv1/Conv does not support dynamic shapes in any dimension.",
        "[W] [TRT] Default DLA is enabled but layer /conv1/Conv is not supported on DLA, falling back to GPU.",
        "[W] [TRT] DLA Layer /relu/Relu does not support dynamic shapes in any dimension.",
        "[W] [TRT] Default DLA is enabled but layer /relu/Relu is not supported on DLA, falling back to GPU.",
    ])
    report = parse_dla_log(log)
    assert report["fallbacks"] == {"/conv1/Conv": "does not support dynamic shapes",
                                   "/relu/Relu": "does not support dynamic shapes"}
    assert report["dynamic_shapes"] is True
    assert "--batch B" in summarize(report)
