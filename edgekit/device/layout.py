"""The artifact layout: the one place that names every file a run writes, ships or measures.

What each exported model is (precision, flavour), which exported model each job runs or builds its
engine from (as the placement's runner declares in its registry entry), which exported model is each
engine's accuracy twin, and how result files are named and parsed. Every other module asks here instead
of spelling a file name.

Python 3.8 clean and torch-free: the host writes this layout, the device reads it.
"""

import os
import re
import time
import uuid
from typing import NamedTuple, Optional

from ..errors import EdgekitError
from .runtime import registry

# ---- files of an artifacts folder (host side writes them; the bundle carries some to the device)
SUMMARY = "summary.json"
LOCK = ".edgekit.lock"
TEACHER = "teacher.pt"
STUDENT = "student.pt"
ROUNDS_DIR = "rounds"
VARIANTS_DIR = "variants"
COMPARE_DIR = "compare"
BUNDLE_DIR = "device_bundle"
EVAL_SET = "eval.npz"
CALIB_CACHE = "calib.cache"
CALIB_RANGES = "calib.ranges.json"
# TensorRT layer name -> precision for implicit INT8 builds (DLA): the layers the fallback kept
LAYER_PRECISIONS = "layer_precisions.json"

# ---- what each INT8 stage writes (quantize -> fallback -> ...); the `int8` stage ships the last one's
INT8_DIR = "int8"
# fp32: the FP32 graph with the weights a stage trained (QAT), which its INT8 files quantize
INT8_KINDS = ("qdq", "cpu", "cache", "layers", "fp32")


def int8_stage_file(stage: str, kind: str) -> str:
    """int8/<stage>.qdq.onnx, .cpu.onnx, .calib.cache, .layers.json or .fp32.onnx: one INT8 stage's own output."""
    suffix = {"qdq": "qdq.onnx", "cpu": "cpu.onnx", "cache": "calib.cache", "layers": "layers.json",
              "fp32": "fp32.onnx"}[kind]
    return "{}/{}.{}".format(INT8_DIR, stage, suffix)

# ---- files of a bundle on the device
TARGET_FILE = "target.yaml"
JOBS_FILE = "jobs.json"
ENGINES_DIR = "engines"
RESULTS_DIR = "results"
HANDOFF_DIR = "handoff"        # handoff/<stem>/{deepstream,triton}: the packages built from each measured model
LOADGEN_SUFFIX = ".loadgen"    # results/<stem>.loadgen.json and its MLPerf log tree results/<stem>.loadgen.mlperf/
MLPERF_LOGS_SUFFIX = ".mlperf"
TIMING_CACHE = "timing.cache"
BUNDLE_STAMP = ".bundle"       # inside results/: the fingerprint of the bundle the results measured
ERROR_SUFFIX = ".error.json"   # a failed job writes results/<stem>.error.json instead of <stem>.json


class ModelFile(NamedTuple):
    """One exported ONNX model of the student."""
    name: str                # short name used in summaries: fp32, fp16, int8.qdq, int8.cpu
    path: str                # file name inside the artifacts folder and the bundle
    precision: str           # fp32, fp16 or int8
    flavour: str             # plain, qdq (explicit INT8 for TensorRT), cpu (u8s8 for onnxruntime)
    description: str         # what it is for (summary.json's "for")


MODELS = (
    ModelFile("fp32", "model.fp32.onnx", "fp32", "plain", "tensorrt, onnxruntime"),
    ModelFile("fp16", "model.fp16.onnx", "fp16", "plain", "tensorrt"),
    ModelFile("int8.qdq", "model.int8.qdq.onnx", "int8", "qdq", "tensorrt (explicit Q/DQ)"),
    ModelFile("int8.cpu", "model.int8.cpu.onnx", "int8", "cpu", "onnxruntime cpu"),
)
MODELS_BY_NAME = {m.name: m for m in MODELS}
MODELS_BY_PATH = {m.path: m for m in MODELS}

FP32 = MODELS_BY_NAME["fp32"].path
FP16 = MODELS_BY_NAME["fp16"].path
INT8_QDQ = MODELS_BY_NAME["int8.qdq"].path
INT8_CPU = MODELS_BY_NAME["int8.cpu"].path
# the FP32 graph the INT8 files quantize: model.fp32.onnx after PTQ, the QAT-trained weights after qat;
# DLA's implicit INT8 builds from it with calib.cache (so its scales and its weights belong together)
INT8_FP32 = "model.int8.fp32.onnx"
# the shipped name of each kind of INT8 file (int8_stage_file kinds)
SHIPPED_INT8 = {"qdq": INT8_QDQ, "cpu": INT8_CPU, "cache": CALIB_CACHE, "layers": LAYER_PRECISIONS,
                "fp32": INT8_FP32}
# what a runner's `int8_from` may name: an exported model, or the INT8 files' own FP32 graph
INT8_SOURCES = dict({m.name: m.path for m in MODELS}, **{"int8.fp32": INT8_FP32})

PLACEMENTS = ("cpu", "gpu", "dla0", "dla1")
PRECISIONS = ("fp32", "fp16", "int8")


def model_file(path: str) -> Optional[ModelFile]:
    """The exported model a file name (or path) is, or None for a variant or a foreign file."""
    return MODELS_BY_PATH.get(os.path.basename(path))


def precision_of(path: str) -> Optional[str]:
    """The precision a file name says: model.int8.qdq.onnx -> int8, round1.fp32.onnx -> fp32."""
    known = model_file(path)
    if known:
        return known.precision
    if os.path.basename(path) == INT8_FP32:
        return "fp32"
    for part in os.path.basename(path).split("."):
        if part in PRECISIONS:
            return part
    return None


# ---- which ONNX feeds which engine, and which exported model stands for its accuracy
def engine_source(placement: str, precision: str) -> Optional[str]:
    """The exported model a job at (placement, precision) runs or builds its engine from; None when no
    runner runs that combination (DLA has no FP32).

    FP32 and FP16 run their own files; INT8 runs what the placement's runner declares (`int8_from`):
    onnxruntime the u8s8 CPU flavour, TensorRT on the GPU the explicit Q/DQ model, and on DLA the FP32
    graph the INT8 files quantize (model.int8.fp32.onnx: the QAT weights when qat ran) with the
    calibration cache (implicit INT8: Xavier's DLA takes no explicit Q/DQ).
    """
    if placement not in PLACEMENTS or precision not in PRECISIONS:
        raise EdgekitError("no model for placement {!r} at precision {!r}".format(placement, precision))
    runner = registry.runner_for(placement, precision)
    if runner is None:
        return None
    if precision != "int8":
        return MODELS_BY_NAME[precision].path
    name = (runner.int8_from or {}).get(registry.placement_kind(placement))
    if name not in INT8_SOURCES:
        raise EdgekitError("the {} runner runs INT8 on {} but its entry names no exported model for it "
                           "(int8_from): one of {}".format(runner.name, placement, ", ".join(INT8_SOURCES)))
    return INT8_SOURCES[name]


def accuracy_twin(placement: str, precision: str) -> str:
    """The exported model whose host-measured top-1 an engine at (placement, precision) is checked
    against: the nearest ONNX, its own source. An INT8 engine built from a non-INT8 graph (DLA: FP32
    with calib.cache) shares the Q/DQ model's calibration, so the Q/DQ model is its twin."""
    source = engine_source(placement, precision)
    if source is None:
        raise EdgekitError("no runner runs {} on {}".format(precision, placement))
    return source if precision_of(source) == precision else INT8_QDQ


def needs_calibration_cache(placement: str, precision: str) -> bool:
    """INT8 from a graph without Q/DQ (DLA): the engine takes its scales from calib.cache."""
    source = engine_source(placement, precision) if precision == "int8" else None
    return source is not None and precision_of(source) != "int8"


def variant_onnx(variant: str) -> str:
    """A variant (teacher, round<k>) exported as FP32 ONNX, relative to the artifacts folder."""
    return "{}/{}.fp32.onnx".format(VARIANTS_DIR, variant)


def round_checkpoint(k: int, ext: str = "pt") -> str:
    return "{}/round{}.{}".format(ROUNDS_DIR, k, ext)


# ---- jobs, engines and results on the device
def job_stem(variant: str, precision: str, placement: str) -> str:
    return "{}.{}.{}".format(variant, precision, placement)


def engine_path(stem: str, batch: Optional[int] = None) -> str:
    """engines/<stem>.engine, or engines/<stem>.b<batch>.engine for one static batch (DLA)."""
    suffix = ".b{}".format(batch) if batch is not None else ""
    return "{}/{}{}.engine".format(ENGINES_DIR, stem, suffix)


# DLA engines are static, one per batch: `edgekit bench` opens them from this pattern, one per swept batch.
BATCH_PLACEHOLDER = "{batch}"


def engine_pattern(stem: str) -> str:
    """engines/<stem>.b{batch}.engine: engine_path(stem, B) for each batch B."""
    return "{}/{}.b{}.engine".format(ENGINES_DIR, stem, BATCH_PLACEHOLDER)


def result_path(stem: str) -> str:
    return "{}/{}.json".format(RESULTS_DIR, stem)


def loadgen_result_path(stem: str) -> str:
    return "{}/{}{}.json".format(RESULTS_DIR, stem, LOADGEN_SUFFIX)


def mlperf_logs_path(result_file: str) -> str:
    """The MLPerf log tree beside a LoadGen result file: <result without .json>.mlperf/."""
    return (result_file[:-len(".json")] if result_file.endswith(".json") else result_file) + MLPERF_LOGS_SUFFIX


def handoff_path(stem: str, kind: str) -> str:
    return "{}/{}/{}".format(HANDOFF_DIR, stem, kind)


def error_path(stem: str) -> str:
    return "{}/{}{}".format(RESULTS_DIR, stem, ERROR_SUFFIX)


def is_error_file(name: str) -> bool:
    return name.endswith(ERROR_SUFFIX)


def new_run_id() -> str:
    """A result's (or a failed job's) run id: sortable time, then a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


_RUN_ID = re.compile(r"^[0-9A-Za-z-]+$")


def stored_result_name(recipe: str, stem: str, run_id: str, error: bool = False) -> str:
    """benchmarks/results/<target>/<recipe>.<variant>.<precision>.<placement>.<run id>[.error].json"""
    return "{}.{}.{}{}.json".format(recipe, stem, run_id, ".error" if error else "")


class ResultLabels(NamedTuple):
    recipe: str
    variant: str
    precision: str
    placement: str
    run_id: str
    error: bool


def parse_result_name(name: str) -> Optional[ResultLabels]:
    """The labels a stored result file's name carries, or None when it is not one of ours.

    The recipe may itself contain dots; the last four fields are fixed, so they are read from the end.
    """
    base = os.path.basename(name)
    if not base.endswith(".json"):
        return None
    parts = base[:-5].split(".")
    error = parts[-1:] == ["error"]
    if error:
        parts = parts[:-1]
    if len(parts) < 5:
        return None
    recipe = ".".join(parts[:-4])
    variant, precision, placement, run_id = parts[-4:]
    if precision not in PRECISIONS or placement not in PLACEMENTS or not _RUN_ID.match(run_id):
        return None
    return ResultLabels(recipe, variant, precision, placement, run_id, error)
