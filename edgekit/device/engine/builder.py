"""Build TensorRT engines from edgekit's ONNX files, written against TensorRT's Python API (8.5 to 10.x).

- explicit-batch network from the ONNX parser, errors reported per node;
- precision: FP32, FP16, INT8 explicit (the Q/DQ model, GPU), INT8 implicit from `calib.cache`
  (DLA on Xavier cannot take Q/DQ);
- DLA core selection with GPU fallback; workspace limit (a Jetson shares its memory with the CPU);
- per-layer precisions for implicit INT8 (the layers the host's fallback kept in FP16, from
  layer_precisions.json), obeyed (`--precisionConstraints=obey --layerPrecisions=...` in trtexec);
- builder optimization level where the version has it; an optimization profile over the batch;
- a persistent timing cache; the build log and metadata JSON kept beside the engine.

`plan_build` validates a request and `trtexec_command` prints the same build as a trtexec line:
both are pure and tested without TensorRT.
"""

import json
import os
import shlex
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...artifacts import atomic_path, sha256_file, write_text_atomic
from ...errors import EdgekitError
from ...lazy import lazy_import
from .api import MIN_VERSION, TrtApi, tensorrt_available, trt
from .calibcache import DLA_ALGORITHM
from .calibcache import header as cache_header_for
from .metadata import EngineMetadata, save_metadata

PRECISIONS = ("fp32", "fp16", "int8")


class BuildConfig(object):
    def __init__(self, onnx_path: str, engine_path: Optional[str] = None, precision: str = "fp16",
                 dla_core: Optional[int] = None, gpu_fallback: bool = True, workspace_mb: int = 1024,
                 optimization_level: Optional[int] = None, min_batch: Optional[int] = None,
                 opt_batch: Optional[int] = None, max_batch: Optional[int] = None,
                 static_batch: Optional[int] = None, timing_cache: Optional[str] = None,
                 calibration_cache: Optional[str] = None, input_name: str = "input",
                 input_shape: Optional[List[int]] = None, layer_precisions: Optional[str] = None,
                 max_aux_streams: Optional[int] = None) -> None:
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
        self.layer_precisions = layer_precisions  # layer_precisions.json (implicit INT8 only)
        self.input_name = input_name
        self.input_shape = input_shape  # [C, H, W]; read from the ONNX model when None
        # 0: every layer on the enqueue's stream (TensorRT 8.6+ may otherwise run independent branches at
        # once, and a per-layer profile of them would overlap); None: TensorRT's choice
        self.max_aux_streams = max_aux_streams
        device = "dla{}".format(dla_core) if dla_core is not None else "gpu"
        stem = os.path.basename(onnx_path)
        stem = stem[:-5] if stem.endswith(".onnx") else stem
        for suffix in (".fp32", ".fp16", ".int8.qdq", ".int8.cpu", ".int8"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if dla_core is not None:
            # one static engine per batch size on DLA (batch 1 when none is given, as batch_profile says)
            implied = 1 if min_batch is None and opt_batch is None and max_batch is None else None
            batch = static_batch if static_batch is not None else implied
            device += ".b{}".format(batch) if batch is not None else ""
        self.engine_path = engine_path or os.path.join(os.path.dirname(onnx_path) or ".",
                                                       "{}.{}.{}.engine".format(stem, precision, device))

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def check_build(cfg: BuildConfig) -> str:
    """Check a build request before TensorRT sees it; return the INT8 mode (or the precision) or raise."""
    if cfg.precision not in PRECISIONS:
        raise EdgekitError("precision must be one of {}, got {!r}".format(", ".join(PRECISIONS), cfg.precision))
    if not os.path.isfile(cfg.onnx_path):
        raise EdgekitError("ONNX model not found: {}".format(cfg.onnx_path))
    name = os.path.basename(cfg.onnx_path)
    qdq = ".int8.qdq." in name
    if ".int8.cpu." in name:
        raise EdgekitError("{} is the onnxruntime CPU flavour (uint8); build TensorRT engines from "
                           "model.int8.qdq.onnx (GPU) or model.int8.fp32.onnx + calib.cache (DLA)".format(name))
    mode = cfg.precision
    if cfg.precision == "int8":
        if cfg.dla_core is not None:
            if qdq:
                raise EdgekitError("DLA on Xavier's TensorRT 8.5 cannot take Q/DQ (explicit) INT8: build DLA "
                                   "engines from model.int8.fp32.onnx with --calib calib.cache")
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
    if cfg.layer_precisions and mode != "int8-implicit":
        raise EdgekitError("--layer-precisions applies to implicit INT8 (DLA, or the GPU with --calib); "
                           "model.int8.qdq.onnx carries its kept layers itself (no Q/DQ around them)")
    batch_profile(cfg)
    if cfg.workspace_mb < 16:
        raise EdgekitError("workspace must be at least 16 MiB, got {}".format(cfg.workspace_mb))
    return mode


def batch_profile(cfg: BuildConfig) -> Tuple[int, int, int]:
    """(min, opt, max) batch of the one optimization profile.

    kOPT is the shape TensorRT tunes kernels for: a GPU profile whose opt is 1 runs a batch-32 Offline
    sweep on kernels picked for batch 1. Without --opt-batch, opt is the max, the batch Offline measures
    most (deploy passes it explicitly; see deploy/plan.py).

    DLA takes only static shapes: with min < max TensorRT moves every DLA layer to the GPU ("does not
    support dynamic shapes"), so a DLA build is one static batch, `--batch B` (batch 1 when none given),
    one engine per batch size.
    """
    if cfg.static_batch is not None:
        if cfg.static_batch < 1:
            raise EdgekitError("--batch must be at least 1, got {}".format(cfg.static_batch))
        return cfg.static_batch, cfg.static_batch, cfg.static_batch
    given = [b for b in (cfg.min_batch, cfg.opt_batch, cfg.max_batch) if b is not None]
    if cfg.dla_core is not None:
        if not given:
            return 1, 1, 1
        if len(given) == 3 and len(set(given)) == 1:
            return given[0], given[0], given[0]
        raise EdgekitError("DLA engines need a static batch (min = opt = max; a dynamic profile runs every DLA "
                           "layer on the GPU): pass --batch B and build one engine per batch size")
    low = cfg.min_batch if cfg.min_batch is not None else 1
    high = cfg.max_batch if cfg.max_batch is not None else max(8, low, cfg.opt_batch or 1)
    opt = cfg.opt_batch if cfg.opt_batch is not None else high
    if not 1 <= low <= opt <= high:
        raise EdgekitError("batch profile must satisfy 1 <= min <= opt <= max, got {}/{}/{}".format(low, opt, high))
    return low, opt, high


def plan_build(cfg: BuildConfig, input_shape: Optional[List[int]] = None,
               input_name: Optional[str] = None) -> Dict[str, Any]:
    """The one build plan: `build_engine` configures TensorRT from it and `trtexec_command` prints it.

    `input_shape` ([C, H, W]) and `input_name`: the network's (build_engine passes what the parser
    found); otherwise `cfg.input_shape`, else read from the ONNX file with `onnx`.
    """
    mode = check_build(cfg)
    onnx_input = None
    if input_shape is None and cfg.input_shape is None:
        onnx_input = _onnx_input(cfg.onnx_path)
    elif input_name is None:
        try:  # the shape was given: the ONNX only names the input, and may be unreadable here
            onnx_input = _onnx_input(cfg.onnx_path)
        except EdgekitError:
            onnx_input = None
    chw = input_shape or cfg.input_shape or (onnx_input[1] if onnx_input else None)
    if not chw:
        raise EdgekitError("cannot read the input shape of {} ({}): pass --input-shape CxHxW".format(
            cfg.onnx_path, "the onnx package is not installed" if onnx_input is None else "its dims are dynamic"))
    name = input_name or (onnx_input[0] if onnx_input else cfg.input_name)
    low, opt, high = batch_profile(cfg)
    flags = []
    if cfg.precision == "fp16":
        flags.append("FP16")
    elif cfg.precision == "int8":
        # FP16 beside INT8: a layer without an INT8 kernel falls back to FP16, not FP32
        flags += ["INT8", "FP16"]
    device = "dla{}".format(cfg.dla_core) if cfg.dla_core is not None else "gpu"
    if cfg.dla_core is not None and cfg.gpu_fallback:
        flags.append("GPU_FALLBACK")
    precisions, constraints = read_layer_precisions(cfg.layer_precisions)
    if precisions:
        flags.append(_CONSTRAINT_FLAGS[constraints])
    calibrator = None
    if mode == "int8-implicit":
        # TensorRT requires the entropy calibrator (v2) for DLA; edgekit's caches all carry its header.
        calibrator = {"class": "IInt8EntropyCalibrator2", "algorithm": DLA_ALGORITHM,
                      "cache": cfg.calibration_cache, "cache_header": _cache_header(str(cfg.calibration_cache))}
    return {"onnx": cfg.onnx_path, "engine_path": cfg.engine_path, "precision": cfg.precision, "mode": mode,
            "device": device, "dla_core": cfg.dla_core,
            "gpu_fallback": cfg.gpu_fallback if cfg.dla_core is not None else None,
            "flags": flags, "calibrator": calibrator, "layer_precisions": precisions,
            "profiles": [{"input": name, "min": [low] + list(chw), "opt": [opt] + list(chw),
                          "max": [high] + list(chw)}],
            "static": low == opt == high, "workspace_mb": cfg.workspace_mb,
            "optimization_level": cfg.optimization_level, "timing_cache": cfg.timing_cache,
            "max_aux_streams": cfg.max_aux_streams}


_TRTEXEC_FLAGS = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allowGPUFallback",
                  "OBEY_PRECISION_CONSTRAINTS": "--precisionConstraints=obey",
                  "PREFER_PRECISION_CONSTRAINTS": "--precisionConstraints=prefer"}
# builder flag per `constraints` of layer_precisions.json: obey fails a build that cannot keep a layer's
# precision, prefer lets the builder pick another (then the accuracy budget may not hold)
_CONSTRAINT_FLAGS = {"obey": "OBEY_PRECISION_CONSTRAINTS", "prefer": "PREFER_PRECISION_CONSTRAINTS"}
LAYER_PRECISIONS_SCHEMA = "edgekit.layer_precisions/1"


def read_layer_precisions(path: Optional[str]) -> Tuple[Dict[str, str], str]:
    """({TensorRT layer name: precision}, "obey" | "prefer") from layer_precisions.json ({} without one)."""
    if not path:
        return {}, "obey"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read layer precisions {}: {}".format(path, exc)) from None
    if not isinstance(data, dict) or data.get("schema") != LAYER_PRECISIONS_SCHEMA:
        raise EdgekitError("{} is not an edgekit layer-precision file ({}); it is written by edgekit run's "
                           "fallback stage".format(path, LAYER_PRECISIONS_SCHEMA))
    precisions, constraints = dict(data.get("precisions") or {}), data.get("constraints", "obey")
    bad = [p for p in precisions.values() if p not in ("fp32", "fp16", "int8")]
    if bad or constraints not in _CONSTRAINT_FLAGS:
        raise EdgekitError("{}: precisions must be fp32, fp16 or int8 and constraints obey or prefer, got {!r}".format(
            path, bad[0] if bad else constraints))
    unsayable = [name for name in precisions if "," in name or ":" in name]
    if unsayable:
        raise EdgekitError("layer {!r} in {}: trtexec's --layerPrecisions cannot name a layer with ',' or ':'; "
                           "rename the ONNX node".format(unsayable[0], path))
    return precisions, constraints


def trtexec_args(plan: Dict[str, Any], api: TrtApi) -> List[str]:
    """The trtexec line of a plan for `api`'s TensorRT: what `configure` really sets there (a Jetson user
    can paste it; trtexec lives in /usr/src/tensorrt/bin)."""
    args = ["/usr/src/tensorrt/bin/trtexec", "--onnx=" + plan["onnx"], "--saveEngine=" + plan["engine_path"]]

    def dims(shape: List[int]) -> str:
        return "x".join(str(d) for d in shape)

    if plan["static"]:
        args.append("--shapes=" + ",".join("{}:{}".format(p["input"], dims(p["opt"])) for p in plan["profiles"]))
    else:
        for key in ("min", "opt", "max"):
            args.append("--{}Shapes=".format(key) + ",".join(
                "{}:{}".format(p["input"], dims(p[key])) for p in plan["profiles"]))
    args += [_TRTEXEC_FLAGS[f] for f in plan["flags"] if f != "GPU_FALLBACK"]
    if plan["layer_precisions"]:
        args.append("--layerPrecisions=" + ",".join(
            "{}:{}".format(name, precision) for name, precision in sorted(plan["layer_precisions"].items())))
    if plan["calibrator"]:
        args.append("--calib=" + str(plan["calibrator"]["cache"]))
    if plan["dla_core"] is not None:
        args.append("--useDLACore={}".format(plan["dla_core"]))
        if "GPU_FALLBACK" in plan["flags"]:
            args.append("--allowGPUFallback")
    args.append("--memPoolSize=workspace:{}".format(plan["workspace_mb"]))  # MiB (TensorRT 8.4+)
    if plan["optimization_level"] is not None and api.builder_optimization_level:  # trtexec 8.6+
        args.append("--builderOptimizationLevel={}".format(plan["optimization_level"]))
    if plan.get("max_aux_streams") is not None and api.aux_streams:  # trtexec 8.6+
        args.append("--maxAuxStreams={}".format(plan["max_aux_streams"]))
    if plan["timing_cache"]:
        args.append("--timingCacheFile=" + plan["timing_cache"])
    args.append("--verbose")
    return args


def trtexec_command(cfg: BuildConfig, input_shape: Optional[List[int]] = None,
                    tensorrt_version: Optional[str] = None) -> str:
    """The trtexec line of `plan_build(cfg, input_shape)`: the very build `build_engine` makes with
    `tensorrt_version` (default: the TensorRT installed here, else 8.5, Xavier's and edgekit's floor)."""
    if tensorrt_version is None:
        tensorrt_version = tensorrt_available() or ".".join(str(v) for v in MIN_VERSION)
    api = TrtApi(tensorrt_version)
    return " ".join(shlex.quote(a) for a in trtexec_args(plan_build(cfg, input_shape), api))


def _cache_header(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.readline().decode("ascii", "replace").strip()
    except OSError:
        return None


def _onnx_input(path: str) -> Optional[Tuple[str, Optional[List[int]]]]:
    """(first input's name, [C, H, W] or None when dynamic) from the ONNX file; None without `onnx`."""
    try:
        onnx = lazy_import("onnx")
    except EdgekitError:
        return None
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise EdgekitError("{} is not a readable ONNX file ({}); pass --input-shape CxHxW or re-export it".format(
            path, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)) from None
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
        return value.name, (dims if dims and all(d > 0 for d in dims) else None)
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
    shapes = list(batch_profile(cfg))
    calib = sha256_file(cfg.calibration_cache) if cfg.calibration_cache else None
    same = (meta.get("onnx_sha256") == sha256_file(cfg.onnx_path) and meta.get("tensorrt_version") == tensorrt_version
            and meta.get("precision") == cfg.precision and meta.get("dla_core") == cfg.dla_core
            and [(profile.get(k) or [None])[0] for k in ("min", "opt", "max")] == shapes
            and flags.get("calibration_cache_sha256") == calib
            and (meta.get("plan") or {}).get("layer_precisions", {}) == read_layer_precisions(cfg.layer_precisions)[0]
            and (cfg.dla_core is None or flags.get("gpu_fallback") == cfg.gpu_fallback))
    return meta if same else None


def build_engine(cfg: BuildConfig, log: Callable[[str], None] = print, force: bool = False) -> Dict[str, Any]:
    """Build and serialize an engine; write `<engine>.json` (metadata) and `<engine>.log` beside it.

    An engine already built from the same ONNX with the same settings is kept (`force` rebuilds):
    a re-run of a deploy resumes instead of spending minutes per engine again.
    """
    check_build(cfg)  # a bad request fails before TensorRT is imported
    api = TrtApi(trt.__version__)
    existing = None if force else reusable_engine(cfg, trt.__version__)
    if existing is not None:
        log("{} is up to date (built {} from this ONNX with TensorRT {}); kept".format(
            cfg.engine_path, existing.get("built_at"), trt.__version__))
        return existing
    if cfg.optimization_level is not None and not api.builder_optimization_level:
        log("TensorRT {} has no builder optimization level (8.6+): --optimization-level {} is not applied".format(
            trt.__version__, cfg.optimization_level))
    lines: List[str] = []
    logger = _capturing_logger(lines)
    builder = trt.Builder(logger)
    network = builder.create_network(api.network_flags())
    parser = _parse(trt.OnnxParser(network, logger), api, cfg.onnx_path)  # kept alive: it owns the weights
    tensor = network.get_input(0)
    chw = [int(d) for d in tensor.shape[1:]]
    if any(d < 0 for d in chw):
        raise EdgekitError("input {} has dynamic spatial dims {}; edgekit exports fixed image sizes".format(
            tensor.name, chw))
    plan = plan_build(cfg, chw, tensor.name)
    config = configure(api, builder, plan)
    set_layer_precisions(network, plan["layer_precisions"])
    config.set_timing_cache(config.create_timing_cache(_read_bytes(cfg.timing_cache)), ignore_mismatch=False)
    log("building {} engine ({}) from {} with TensorRT {}; this takes minutes on a Jetson".format(
        cfg.precision, plan["device"], cfg.onnx_path, trt.__version__))
    started = time.time()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.time() - started
    del parser
    _write_engine(cfg, serialized, config, lines)
    meta = _metadata(cfg, plan, seconds, lines, log)
    log("wrote {} ({:.1f} MB) in {:.0f} s; metadata {}.json, log {}.log".format(
        cfg.engine_path, os.path.getsize(cfg.engine_path) / 1e6, seconds, cfg.engine_path, cfg.engine_path))
    return meta


def _capturing_logger(lines: List[str]) -> "trt.ILogger":
    """A TensorRT logger that keeps every line (the build log beside the engine, and the DLA report)."""
    tags = {trt.ILogger.Severity.INTERNAL_ERROR: "F", trt.ILogger.Severity.ERROR: "E",
            trt.ILogger.Severity.WARNING: "W", trt.ILogger.Severity.INFO: "I"}

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: "trt.ILogger.Severity", msg: str) -> None:
            lines.append("[{}] [TRT] {}".format(tags.get(severity, "V"), msg))

    return CapturingLogger()


def _parse(parser: "trt.OnnxParser", api: TrtApi, onnx_path: str) -> "trt.OnnxParser":
    with open(onnx_path, "rb") as f:
        parsed = parser.parse(f.read(), onnx_path)
    if not parsed:
        problems = [parser_error_text(api, parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgekitError("TensorRT {} cannot parse {}: {}{}".format(
            trt.__version__, onnx_path, problems[0] if problems else "unknown error",
            " (and {} more)".format(len(problems) - 1) if len(problems) > 1 else ""))
    return parser


def _read_bytes(path: Optional[str]) -> bytes:
    if not path or not os.path.exists(path):
        return b""
    with open(path, "rb") as f:
        return f.read()


def _write_engine(cfg: BuildConfig, serialized: Any, config: "trt.IBuilderConfig", lines: List[str]) -> None:
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


def _metadata(cfg: BuildConfig, plan: Dict[str, Any], seconds: float, lines: List[str],
              log: Callable[[str], None]) -> Dict[str, Any]:
    from ..bench.environment import l4t_release
    from .device import cuda_device

    device = cuda_device()
    meta = EngineMetadata.create(
        tensorrt_version=trt.__version__, device_name=device["name"], compute_capability=device["compute_capability"],
        dla_core=cfg.dla_core, precision=cfg.precision,
        profile=dict(plan["profiles"][0]),
        onnx_path=cfg.onnx_path, onnx_sha256=sha256_file(cfg.onnx_path), build_seconds=round(seconds, 1),
        flags={"mode": plan["mode"], "gpu_fallback": cfg.gpu_fallback, "optimization_level": cfg.optimization_level,
               "timing_cache": cfg.timing_cache, "calibration_cache": cfg.calibration_cache,
               "calibration_cache_sha256": sha256_file(cfg.calibration_cache) if cfg.calibration_cache else None},
        workspace_mb=cfg.workspace_mb, l4t=l4t_release())
    meta["plan"] = plan
    if cfg.dla_core is not None:
        from .dla_report import parse_dla_log, summarize

        report = parse_dla_log("\n".join(lines))
        meta["dla_report"] = report
        log(summarize(report))
    save_metadata(cfg.engine_path, meta)
    return meta


def configure(api: TrtApi, builder: "trt.Builder", plan: Dict[str, Any]) -> "trt.IBuilderConfig":
    """An IBuilderConfig set from `plan` alone: flags, calibrator, device, profile, workspace."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_mb"] << 20)  # 8.4+
    if plan["optimization_level"] is not None and api.builder_optimization_level:
        config.builder_optimization_level = plan["optimization_level"]
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if plan.get("max_aux_streams") is not None and api.aux_streams:  # 8.5 has one stream and no such attribute
        config.max_aux_streams = int(plan["max_aux_streams"])
    flags = {"FP16": trt.BuilderFlag.FP16, "INT8": trt.BuilderFlag.INT8, "GPU_FALLBACK": trt.BuilderFlag.GPU_FALLBACK,
             "OBEY_PRECISION_CONSTRAINTS": trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS,
             "PREFER_PRECISION_CONSTRAINTS": trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS}
    for flag in plan["flags"]:
        config.set_flag(flags[flag])
    if plan["calibrator"]:
        config.int8_calibrator = _cache_calibrator(plan["calibrator"]["cache"], api.version)
    if plan["dla_core"] is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan["dla_core"]
    profile = builder.create_optimization_profile()
    for p in plan["profiles"]:
        profile.set_shape(p["input"], p["min"], p["opt"], p["max"])
    config.add_optimization_profile(profile)
    return config


def set_layer_precisions(network: "trt.INetworkDefinition", precisions: Dict[str, str]) -> None:
    """ILayer.precision for each named layer; a name the network lacks is an error (a stale file would
    otherwise build an engine without the kept layers)."""
    if not precisions:
        return
    types = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    missing = sorted(set(precisions) - set(layers))
    if missing:
        raise EdgekitError("layer {} of layer_precisions.json is not in the network ({} layers, e.g. {}): the "
                           "file is from another model; re-run edgekit run".format(
                               missing[0], len(layers), ", ".join(list(layers)[:3])))
    for name, precision in precisions.items():
        layers[name].precision = types[precision]


def parser_error_text(api: TrtApi, error: "trt.ParserError") -> str:
    """'<node>: <message>' of an IParserError: its node name where the version has node_name() (9.1+)."""
    where = error.node_name() if api.parser_error_node_name else "node #{}".format(error.node())
    return "{}: {}".format(where or "node #{}".format(error.node()), error.desc())


def _cache_calibrator(cache_path: str, trt_version: str) -> "trt.IInt8EntropyCalibrator2":
    """An IInt8EntropyCalibrator2 that only serves edgekit's calib.cache (no calibration data on the device).

    TensorRT requires the entropy calibrator (v2) for DLA, and it silently ignores a cache whose
    header names another version or algorithm (the engine then has no INT8 scales): refuse that here.
    """
    with open(cache_path, "rb") as f:
        cache = f.read()
    found = cache.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    wanted = cache_header_for(trt_version)
    if found != wanted:
        raise EdgekitError("{} starts with {!r} but TensorRT {} reads only {!r} caches and would ignore it, "
                           "building without INT8 scales: re-tag it for this TensorRT (edgekit's device bundle "
                           "does, calibcache.retag_calibration_cache)".format(cache_path, found, trt_version, wanted))
    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # noqa: ANN001, ANN201
            return None  # the cache holds every scale: TensorRT never needs a batch

        def read_calibration_cache(self):  # noqa: ANN201
            return cache

        def write_calibration_cache(self, data):  # noqa: ANN001
            return None

    return CacheCalibrator()
