"""Build TensorRT engines from edgekit's ONNX files, written against TensorRT's Python API (8.5 to 10.x).

- explicit-batch network from the ONNX parser, errors reported per node;
- precision: FP32, FP16, INT8 explicit (the Q/DQ model, GPU), INT8 implicit from `calib.cache`
  (DLA on Xavier cannot take Q/DQ);
- DLA core selection with GPU fallback; workspace limit (a Jetson shares its memory with the CPU);
- builder optimization level where the version has it; an optimization profile over the batch;
- a persistent timing cache; the build log and metadata JSON kept beside the engine.

`plan_build` validates a request and `trtexec_command` prints the same build as a trtexec line:
both are pure and tested without TensorRT.
"""

import os
import shlex
import time
from typing import Any, Callable, Dict, List, Optional

from ...artifacts import atomic_path, sha256_file, write_text_atomic
from ...errors import EdgekitError
from ...lazy import lazy_import
from .api import TrtApi
from .metadata import EngineMetadata, save_metadata

PRECISIONS = ("fp32", "fp16", "int8")


class BuildConfig(object):
    def __init__(self, onnx_path: str, engine_path: Optional[str] = None, precision: str = "fp16",
                 dla_core: Optional[int] = None, gpu_fallback: bool = True, workspace_mb: int = 1024,
                 optimization_level: Optional[int] = None, min_batch: int = 1, opt_batch: int = 1,
                 max_batch: int = 8, static_batch: Optional[int] = None, timing_cache: Optional[str] = None,
                 calibration_cache: Optional[str] = None, input_name: str = "input",
                 input_shape: Optional[List[int]] = None) -> None:
        self.onnx_path = onnx_path
        self.precision = precision
        self.dla_core = dla_core
        self.gpu_fallback = gpu_fallback
        self.workspace_mb = workspace_mb
        self.optimization_level = optimization_level
        self.min_batch, self.opt_batch, self.max_batch = min_batch, opt_batch, max_batch
        self.static_batch = static_batch
        self.timing_cache = timing_cache
        self.calibration_cache = calibration_cache
        self.input_name = input_name
        self.input_shape = input_shape  # [C, H, W]; read from the ONNX model when None
        device = "dla{}".format(dla_core) if dla_core is not None else "gpu"
        stem = os.path.basename(onnx_path)
        stem = stem[:-5] if stem.endswith(".onnx") else stem
        for suffix in (".fp32", ".fp16", ".int8.qdq", ".int8.cpu", ".int8"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        self.engine_path = engine_path or os.path.join(os.path.dirname(onnx_path) or ".",
                                                       "{}.{}.{}.engine".format(stem, precision, device))

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def plan_build(cfg: BuildConfig) -> Dict[str, Any]:
    """Check a build request before TensorRT sees it; return the resolved plan or raise EdgekitError."""
    if cfg.precision not in PRECISIONS:
        raise EdgekitError("precision must be one of {}, got {!r}".format(", ".join(PRECISIONS), cfg.precision))
    if not os.path.isfile(cfg.onnx_path):
        raise EdgekitError("ONNX model not found: {}".format(cfg.onnx_path))
    name = os.path.basename(cfg.onnx_path)
    qdq = ".int8.qdq." in name
    if ".int8.cpu." in name:
        raise EdgekitError("{} is the onnxruntime CPU flavour (uint8); build TensorRT engines from "
                           "model.int8.qdq.onnx (GPU) or model.fp32.onnx + calib.cache (DLA)".format(name))
    mode = cfg.precision
    if cfg.precision == "int8":
        if cfg.dla_core is not None:
            if qdq:
                raise EdgekitError("DLA on Xavier's TensorRT 8.5 cannot take Q/DQ (explicit) INT8: build DLA "
                                   "engines from model.fp32.onnx with --calib calib.cache")
            if not cfg.calibration_cache or not os.path.isfile(cfg.calibration_cache):
                raise EdgekitError("INT8 on DLA needs the calibration cache: pass --calib calib.cache (written "
                                   "by edgekit run next to the ONNX files)")
            mode = "int8-implicit"
        elif qdq:
            mode = "int8-explicit"
        elif cfg.calibration_cache and os.path.isfile(cfg.calibration_cache):
            mode = "int8-implicit"
        else:
            raise EdgekitError("INT8 on the GPU needs model.int8.qdq.onnx (explicit Q/DQ) or --calib "
                               "calib.cache; without either TensorRT's INT8 accuracy is meaningless")
    elif qdq:
        raise EdgekitError("{} holds Q/DQ nodes: build it with --precision int8".format(name))
    if cfg.dla_core is not None:
        if cfg.dla_core not in (0, 1):
            raise EdgekitError("dla core must be 0 or 1 (Xavier and Orin have two), got {}".format(cfg.dla_core))
        if cfg.precision == "fp32":
            raise EdgekitError("DLA runs FP16 or INT8 only: use --precision fp16 or int8 with --dla")
    if cfg.static_batch is None and not (1 <= cfg.min_batch <= cfg.opt_batch <= cfg.max_batch):
        raise EdgekitError("batch profile must satisfy 1 <= min <= opt <= max, got {}/{}/{}".format(
            cfg.min_batch, cfg.opt_batch, cfg.max_batch))
    if cfg.workspace_mb < 16:
        raise EdgekitError("workspace must be at least 16 MiB, got {}".format(cfg.workspace_mb))
    return {"mode": mode, "device": "dla{}".format(cfg.dla_core) if cfg.dla_core is not None else "gpu",
            "engine_path": cfg.engine_path}


def trtexec_command(cfg: BuildConfig, input_shape: Optional[List[int]] = None) -> str:
    """The equivalent trtexec line (a Jetson user can paste it; trtexec lives in /usr/src/tensorrt/bin)."""
    plan = plan_build(cfg)
    shape = input_shape or cfg.input_shape or [3, 224, 224]
    dims = "x".join(str(d) for d in shape)
    args = ["/usr/src/tensorrt/bin/trtexec", "--onnx=" + cfg.onnx_path, "--saveEngine=" + cfg.engine_path]
    if cfg.static_batch is not None:
        args.append("--shapes={}:{}x{}".format(cfg.input_name, cfg.static_batch, dims))
    else:
        args += ["--minShapes={}:{}x{}".format(cfg.input_name, cfg.min_batch, dims),
                 "--optShapes={}:{}x{}".format(cfg.input_name, cfg.opt_batch, dims),
                 "--maxShapes={}:{}x{}".format(cfg.input_name, cfg.max_batch, dims)]
    if cfg.precision == "fp16":
        args.append("--fp16")
    elif cfg.precision == "int8":
        args.append("--int8")
        if plan["mode"] == "int8-implicit":
            args.append("--calib=" + str(cfg.calibration_cache))
        if cfg.dla_core is not None:
            args.append("--fp16")  # layers DLA cannot run in INT8 stay in FP16 rather than FP32
    if cfg.dla_core is not None:
        args.append("--useDLACore={}".format(cfg.dla_core))
        if cfg.gpu_fallback:
            args.append("--allowGPUFallback")
    args.append("--memPoolSize=workspace:{}".format(cfg.workspace_mb))  # MiB (TensorRT 8.4+)
    if cfg.timing_cache:
        args.append("--timingCacheFile=" + cfg.timing_cache)
    args.append("--verbose")
    return " ".join(shlex.quote(a) for a in args)


def _onnx_input_chw(path: str, name: str) -> Optional[List[int]]:
    try:
        onnx = lazy_import("onnx")
    except EdgekitError:
        return None
    model = onnx.load(path, load_external_data=False)
    for value in model.graph.input:
        if value.name == name:
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
            return dims if all(d > 0 for d in dims) else None
    return None


def reusable_engine(cfg: BuildConfig, tensorrt_version: str) -> Optional[Dict[str, Any]]:
    """The metadata of an engine at `cfg.engine_path` built from this very ONNX file, with this
    TensorRT, precision, DLA core and batch range; None when it must be (re)built."""
    from .metadata import load_metadata

    if not os.path.exists(cfg.engine_path):
        return None
    try:
        meta = load_metadata(cfg.engine_path)
    except EdgekitError:
        return None
    profile = meta.get("profile") or {}
    flags = meta.get("flags") or {}
    shapes = [cfg.static_batch] * 3 if cfg.static_batch is not None else [cfg.min_batch, cfg.opt_batch, cfg.max_batch]
    calib = sha256_file(cfg.calibration_cache) if cfg.calibration_cache else None
    same = (meta.get("onnx_sha256") == sha256_file(cfg.onnx_path) and meta.get("tensorrt_version") == tensorrt_version
            and meta.get("precision") == cfg.precision and meta.get("dla_core") == cfg.dla_core
            and [(profile.get(k) or [None])[0] for k in ("min", "opt", "max")] == shapes
            and flags.get("calibration_cache_sha256") == calib
            and (cfg.dla_core is None or flags.get("gpu_fallback") == cfg.gpu_fallback))
    return meta if same else None


def build_engine(cfg: BuildConfig, log: Callable[[str], None] = print, force: bool = False) -> Dict[str, Any]:
    """Build and serialize an engine; write `<engine>.json` (metadata) and `<engine>.log` beside it.

    An engine already built from the same ONNX with the same settings is kept (`force` rebuilds):
    a re-run of a deploy resumes instead of spending minutes per engine again.
    """
    plan = plan_build(cfg)
    trt = lazy_import("tensorrt")
    api = TrtApi(trt.__version__)
    existing = None if force else reusable_engine(cfg, trt.__version__)
    if existing is not None:
        log("{} is up to date (built {} from this ONNX with TensorRT {}); kept".format(
            cfg.engine_path, existing.get("built_at"), trt.__version__))
        return existing
    lines: List[str] = []

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # noqa: ANN001 - TensorRT's callback signature
            tag = {trt.ILogger.Severity.INTERNAL_ERROR: "F", trt.ILogger.Severity.ERROR: "E",
                   trt.ILogger.Severity.WARNING: "W", trt.ILogger.Severity.INFO: "I"}.get(severity, "V")
            lines.append("[{}] [TRT] {}".format(tag, msg))

    logger = CapturingLogger()
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if api.explicit_batch_flag else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(cfg.onnx_path, "rb") as f:
        parsed = parser.parse(f.read(), cfg.onnx_path)
    if not parsed:
        problems = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            where = error.node_name() if api.parser_error_node_name else "node #{}".format(error.node())
            problems.append("{}: {}".format(where, error.desc()))
        raise EdgekitError("TensorRT {} cannot parse {}: {}{}".format(
            trt.__version__, cfg.onnx_path, problems[0] if problems else "unknown error",
            " (and {} more)".format(len(problems) - 1) if len(problems) > 1 else ""))

    config = builder.create_builder_config()
    if api.memory_pool_limit:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    else:  # pragma: no cover - 8.5 is the floor, kept for clarity
        config.max_workspace_size = cfg.workspace_mb << 20
    if cfg.optimization_level is not None and api.builder_optimization_level:
        config.builder_optimization_level = cfg.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if cfg.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif cfg.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # what cannot run in INT8 falls back to FP16, not FP32
        if plan["mode"] == "int8-implicit":
            config.int8_calibrator = _cache_calibrator(trt, cfg.calibration_cache)
    if cfg.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        if cfg.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    tensor = network.get_input(0)
    chw = list(tensor.shape)[1:]
    if cfg.static_batch is not None:
        shapes = [cfg.static_batch] * 3
    else:
        shapes = [cfg.min_batch, cfg.opt_batch, cfg.max_batch]
    if any(d < 0 for d in chw):
        raise EdgekitError("input {} has dynamic spatial dims {}; edgekit exports fixed image sizes".format(
            tensor.name, chw))
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, [shapes[0]] + chw, [shapes[1]] + chw, [shapes[2]] + chw)
    config.add_optimization_profile(profile)

    cache_bytes = b""
    if cfg.timing_cache and os.path.exists(cfg.timing_cache):
        with open(cfg.timing_cache, "rb") as f:
            cache_bytes = f.read()
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    log("building {} engine ({}) from {} with TensorRT {}; this takes minutes on a Jetson".format(
        cfg.precision, plan["device"], cfg.onnx_path, trt.__version__))
    started = time.time()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.time() - started
    log_path = cfg.engine_path + ".log"
    write_text_atomic(log_path, "\n".join(lines) + "\n")
    if serialized is None:
        errors = [line for line in lines if line.startswith(("[E]", "[F]"))]
        raise EdgekitError("TensorRT could not build {}: {} (full log: {})".format(
            cfg.engine_path, errors[-1][10:] if errors else "see the log", log_path))
    with atomic_path(cfg.engine_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(serialized)
    if cfg.timing_cache:
        with atomic_path(cfg.timing_cache) as tmp:
            with open(tmp, "wb") as f:
                f.write(config.get_timing_cache().serialize())

    from ..bench.environment import l4t_release
    from .device import cuda_device

    device = cuda_device()
    meta = EngineMetadata.create(
        tensorrt_version=trt.__version__, device_name=device["name"], compute_capability=device["compute_capability"],
        dla_core=cfg.dla_core, precision=cfg.precision,
        profile={"input": tensor.name, "min": [shapes[0]] + chw, "opt": [shapes[1]] + chw, "max": [shapes[2]] + chw},
        onnx_path=cfg.onnx_path, onnx_sha256=sha256_file(cfg.onnx_path), build_seconds=round(seconds, 1),
        flags={"mode": plan["mode"], "gpu_fallback": cfg.gpu_fallback, "optimization_level": cfg.optimization_level,
               "timing_cache": cfg.timing_cache, "calibration_cache": cfg.calibration_cache,
               "calibration_cache_sha256": sha256_file(cfg.calibration_cache) if cfg.calibration_cache else None},
        workspace_mb=cfg.workspace_mb, l4t=l4t_release())
    if cfg.dla_core is not None:
        from .dla_report import parse_dla_log, summarize

        report = parse_dla_log("\n".join(lines))
        meta["dla_report"] = report
        log(summarize(report))
    save_metadata(cfg.engine_path, meta)
    log("wrote {} ({:.1f} MB) in {:.0f} s; metadata {}.json, log {}".format(
        cfg.engine_path, os.path.getsize(cfg.engine_path) / 1e6, seconds, cfg.engine_path, log_path))
    return meta


def _cache_calibrator(trt: Any, cache_path: str) -> Any:
    """An entropy calibrator that only serves edgekit's calib.cache (no calibration data on the device)."""
    with open(cache_path, "rb") as f:
        cache = f.read()
    header = cache.split(b"\n", 1)[0].decode("ascii", "replace")
    base = trt.IInt8MinMaxCalibrator if header.endswith("MinMaxCalibration") else trt.IInt8EntropyCalibrator2

    class CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # noqa: ANN001, ANN201
            return None  # the cache holds every scale: TensorRT never needs a batch

        def read_calibration_cache(self):  # noqa: ANN201
            return cache

        def write_calibration_cache(self, data):  # noqa: ANN001
            return None

    return CacheCalibrator()
