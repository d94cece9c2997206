"""What each host stage computes. `pipeline.py` declares the stages; the driver (`edgekit.stages`) runs them.

Every function takes the `HostContext` and returns the stage's metrics (JSON-able; kept in the manifest
and reused as they are when the stage is fresh). Models and data are loaded on first use, so a fully
reused run touches neither.
"""

import os
import shutil
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..device import layout
from ..errors import EdgekitError
from ..stages import Context
from .data import DataBundle, evaluate_top1, load_data, predict
from .models import architecture, count_macs_params, load_student, save_student

# The device scores every engine on these images; above this size they are a spread subset of val
# (ImageNet at 224: about 110 images; the digits val split fits whole).
EVAL_SET_BYTES = 64 << 20


class HostContext(Context):
    """The driver's context plus what host stages share: threads, the data, the saved models."""

    @property
    def threads(self) -> int:
        return self.recipe.threads or os.cpu_count() or 1

    @property
    def bench_threads(self) -> int:
        """Runtime threads for timing: `bench.threads`, else the recipe's."""
        return self.recipe.bench.threads or self.threads

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    @property
    def data(self) -> DataBundle:
        return self.cache("data", self._load_data)

    @property
    def num_classes(self) -> int:
        return self.recipe.model.num_classes or self.data.num_classes

    def model(self, name: str) -> torch.nn.Module:
        """teacher.pt / student.pt as saved by their stage, in eval mode (loaded once)."""
        return self.cache(name, lambda: load_student(self.path(name))[0].eval())

    def _load_data(self) -> DataBundle:
        recipe = self.recipe
        self.log("data: {} ({}x{})".format(recipe.data.dataset, recipe.data.image_size, recipe.data.image_size))
        data = load_data(recipe.data, recipe.seed)
        if recipe.model.num_classes and recipe.model.num_classes != data.num_classes:
            raise EdgekitError("model.num_classes is {} but the data has {} classes".format(
                recipe.model.num_classes, data.num_classes))
        self.log("data: {} train / {} val images, {} classes".format(len(data.train), len(data.val),
                                                                     data.num_classes))
        return data


# --------------------------------------------------------------------------- teacher, spiral, evaluation

def teacher(ctx: HostContext) -> Dict[str, Any]:
    from .compress.distill import train

    recipe, num_classes = ctx.recipe, ctx.num_classes
    arch = architecture(recipe.model.arch)
    checkpoint = recipe.model.checkpoint
    if checkpoint:
        ctx.log("teacher: loading {}".format(checkpoint))
        model, info = arch.load_checkpoint(checkpoint, num_classes, log=ctx.log)
        if info["head_replaced"] and not recipe.teacher.train:
            raise EdgekitError("the checkpoint's head was replaced for {} classes, so the teacher must be "
                               "fine-tuned: set teacher.train: true".format(num_classes))
    else:
        if not recipe.teacher.train:
            raise EdgekitError("no teacher: give model.checkpoint or set teacher.train: true")
        ctx.log("teacher: training a {} from scratch for {} epochs".format(_arch_title(arch.name),
                                                                          recipe.teacher.epochs))
        model = arch.build(num_classes=num_classes, zero_init_residual=True)
    history: List[Dict[str, Any]] = []
    resume = ctx.path(layout.TEACHER.replace(".pt", ".train.pt"))
    if recipe.teacher.train and recipe.teacher.epochs > 0:
        history = train(model, ctx.data, recipe.teacher.epochs, recipe.teacher.optimizer, checkpoint=resume,
                        key=ctx.key, seed=recipe.seed, desc="teacher", log=ctx.log)
    if ctx.world.is_writer:
        save_student(ctx.path(layout.TEACHER), model, meta={"role": "teacher", "recipe": recipe.name,
                                                                 "image_size": recipe.data.image_size})
        if os.path.exists(resume):
            os.unlink(resume)
    ctx.forget(layout.TEACHER)
    return {"top1": round(evaluate_top1(model, ctx.data.val_loader()), 3), "history": history,
            "num_classes": num_classes, "train": _training(ctx) if history else None}


def _training(ctx: HostContext) -> Dict[str, Any]:
    """Where and how a stage trained: kept with its metrics, so a reused stage still says how it was made."""
    from .dist import current

    device = getattr(ctx.world, "device", None) or current().device
    return {"device": str(device or "cpu"), "precision": ctx.recipe.train.precision,
            "world_size": int(getattr(ctx.world, "world_size", 1)),
            "global_batch": ctx.recipe.data.batch_size * int(getattr(ctx.world, "world_size", 1)),
            "compile": ctx.recipe.train.compile}


def _arch_title(name: str) -> str:
    return {"resnet50": "ResNet-50"}.get(name, name)


def drop_rounds(ctx: HostContext) -> None:
    """A forced spiral starts from its first round (the rounds on disk are the old one's)."""
    rounds = ctx.path(layout.ROUNDS_DIR)
    if os.path.isdir(rounds):
        shutil.rmtree(rounds)


def compress(ctx: HostContext) -> Dict[str, Any]:
    from .compress.spiral import spiral

    recipe = ctx.recipe
    # The rounds on disk resume only under this teacher: its fingerprint covers the bytes of teacher.pt.
    student, rounds = spiral(ctx.model(layout.TEACHER), ctx.data, recipe, ctx.path(layout.ROUNDS_DIR),
                             teacher_key=ctx.results["teacher"].fingerprint, log=ctx.log)
    if ctx.world.is_writer:
        save_student(ctx.path(layout.STUDENT), student, meta={"role": "student", "recipe": recipe.name,
                                                              "method": recipe.prune.method,
                                                              "image_size": recipe.data.image_size})
    ctx.forget(layout.STUDENT)
    return {"rounds": rounds, "train": _training(ctx)}


def evaluate(ctx: HostContext) -> Dict[str, Any]:
    """Top-1, MACs and params of teacher and student, and how often they agree: one val pass per model."""
    data = ctx.data
    result: Dict[str, Any] = {}
    predicted = {}
    for role, name in (("teacher", layout.TEACHER), ("student", layout.STUDENT)):
        model = ctx.model(name)
        logits, labels = predict(model, data.val_loader())
        if not len(labels):
            raise EdgekitError("the validation split is empty")
        predicted[role] = logits.argmax(1)
        macs, params = count_macs_params(model, data.image_size)
        macs224 = macs if data.image_size == 224 else count_macs_params(model, 224)[0]
        result[role] = {"top1": round(100.0 * float((predicted[role] == labels).mean()), 3),
                        "macs": macs, "params": params, "macs_at_224": macs224}
    result["student"]["width_spec"] = load_student(ctx.path(layout.STUDENT))[1]["width_spec"]
    result["agreement"] = round(100.0 * float((predicted["teacher"] == predicted["student"]).mean()), 3)
    return result


# --------------------------------------------------------------------------- export, quantize, measure

def export(ctx: HostContext) -> Dict[str, Any]:
    """FP32 ONNX (checked against PyTorch, failing beyond the tolerance) and its FP16 twin, both linted."""
    from ..trtlint import check_tensorrt_compatible
    from .export import check_onnx_matches, convert_fp16, export_onnx

    size = ctx.data.image_size
    fp32, fp16 = ctx.path(layout.FP32), ctx.path(layout.FP16)
    ctx.log("export: ONNX opset 17, {0}x{0}, dynamic batch -> {1}".format(size, fp32))
    student = ctx.model(layout.STUDENT)
    export_onnx(student, fp32, size)
    images = next(iter(ctx.data.val_loader()))[0][:64]
    verify = check_onnx_matches(fp32, student, images, ctx.threads)
    convert_fp16(fp32, fp16)
    for path in (fp32, fp16):
        check_tensorrt_compatible(path)
    return {"verify": verify}


def quantize(ctx: HostContext) -> Dict[str, Any]:
    """Both INT8 flavours and calib.cache from real calibration samples, with the worst layers by SQNR."""
    from ..trtlint import check_tensorrt_compatible
    from .compress.quantize import quantization_error
    from .compress.quantize import quantize as quantize_int8

    recipe = ctx.recipe
    calibration = [b.numpy() for b in ctx.data.calibration_batches(recipe.data.calibration_samples,
                                                                   seed=recipe.seed)]
    ctx.log("quantize: INT8, {} calibration on {} real samples".format(recipe.quantize.method,
                                                                     sum(b.shape[0] for b in calibration)))
    fp32 = ctx.path(layout.FP32)
    quant = quantize_int8(fp32, ctx.out_dir, calibration, recipe.quantize.method, recipe.quantize.trt_version,
                          cpu_reduce_range=recipe.quantize.cpu_reduce_range)
    # What goes to TensorRT must pass the lint; the CPU flavour is for onnxruntime (uint8) by design.
    check_tensorrt_compatible(ctx.path(layout.INT8_QDQ))
    images = next(iter(ctx.data.val_loader()))[0][:recipe.quantize.report_samples].numpy()
    reports = {m.flavour: quantization_error(fp32, ctx.path(m.path), images, top=10)
               for m in layout.MODELS if m.precision == "int8"}
    return {"quantization": {"method": quant["method"], "calibration_samples": quant["calibration_samples"],
                             "residual_qdq_added": quant["residual_qdq_added"],
                             "calib_cache": layout.CALIB_CACHE, "calib_cache_tensors": quant["cache_tensors"],
                             "trt_version": recipe.quantize.trt_version, "worst_layers": reports}}


def exported_models(ctx: HostContext) -> List[layout.ModelFile]:
    """The models this run exported: FP32 and FP16 always, INT8 when the quantize stage ran."""
    return [m for m in layout.MODELS if m.precision != "int8" or ctx.ran("quantize")]


def measure(ctx: HostContext) -> Dict[str, Any]:
    """Each exported model's top-1 on the val split, SingleStream latency (bench.threads) and lint."""
    data = ctx.data
    reference, labels = predict(ctx.model(layout.STUDENT), data.val_loader())
    student_top1 = float((reference.argmax(1) == labels).mean() * 100.0)
    sample = {"input": next(iter(data.val_loader()))[0][:1].numpy().astype(np.float32)}
    models = [_measure_one(ctx, m, labels, reference, student_top1, sample) for m in exported_models(ctx)]
    return {"models": models}


def _measure_one(ctx: HostContext, model: layout.ModelFile, labels: np.ndarray, reference: np.ndarray,
                 student_top1: float, sample: Dict[str, np.ndarray]) -> Dict[str, Any]:
    from ..device.bench.scenarios import single_stream
    from ..device.runtime.onnxrt import OnnxRuntimeRunner
    from ..trtlint import lint
    from .export import file_mb, onnx_logits

    path, bench = ctx.path(model.path), ctx.recipe.bench
    logits = onnx_logits(path, (x for x, _ in ctx.data.val_loader()), ctx.threads)
    top1 = float((logits.argmax(1) == labels).mean() * 100.0)
    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"], threads=ctx.bench_threads) as runner:
        ss = single_stream(runner, sample, warmup=5, min_queries=bench.min_queries, min_seconds=bench.min_seconds)
    entry = {"name": model.name, "path": model.path, "precision": model.precision, "for": model.description,
             "top1": round(top1, 3), "top1_delta_vs_pytorch": round(top1 - student_top1, 3),
             "top1_agreement_vs_pytorch": round(float((logits.argmax(1) == reference.argmax(1)).mean() * 100.0), 3),
             "max_abs_diff_vs_pytorch": round(float(np.abs(logits - reference).max()), 6),
             "runtime": "onnxruntime-cpu", "p50_ms": ss["latency"]["p50_ms"], "p99_ms": ss["latency"]["p99_ms"],
             "size_mb": file_mb(path), "tensorrt_lint": [str(v) for v in lint(path)][:5] or "clean"}
    ctx.log("  {:<22} top-1 {:6.2f}% ({:+.2f})  p50 {:7.3f} ms  {:6.2f} MB  {}".format(
        model.path, top1, top1 - student_top1, entry["p50_ms"], entry["size_mb"], model.description))
    return entry


# --------------------------------------------------------------------------- variants, eval set, compare

def variant_sources(ctx: HostContext) -> List[Dict[str, Any]]:
    """Teacher and every spiral round but the last (that one is the student, exported above)."""
    t = ctx.metrics("evaluate")["teacher"]
    found = [{"name": "teacher", "source": layout.TEACHER, "top1": t["top1"], "macs": t["macs"],
              "params": t["params"], "macs_ratio": 1.0}]
    for record in ctx.metrics("compress").get("rounds", [])[:-1]:
        source = layout.round_checkpoint(record["round"])
        if os.path.exists(ctx.path(source)):
            found.append({"name": "round{}".format(record["round"]), "source": source, "top1": record["top1"],
                          "macs": record["macs"], "params": record["params"], "macs_ratio": record["macs_ratio"]})
    for entry in found:
        entry["path"] = layout.variant_onnx(entry["name"])
        entry["precision"] = "fp32"
    return found


def variants(ctx: HostContext) -> Dict[str, Any]:
    """Each variant as FP32 ONNX, checked against PyTorch (failing beyond the tolerance). Its top-1 is the
    PyTorch one measured when it was made: FP32 ONNX agrees to ~1e-5, and re-evaluating the full val
    split per variant would cost an ImageNet pass each."""
    from .export import check_onnx_matches, export_onnx

    images = next(iter(ctx.data.val_loader()))[0][:16]
    found = variant_sources(ctx)
    for entry in found:
        model, _ = load_student(ctx.path(entry["source"]))
        path = ctx.path(entry["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        export_onnx(model, path, ctx.data.image_size)
        entry["max_abs_diff_vs_pytorch"] = round(check_onnx_matches(path, model, images)["max_abs_diff"], 6)
        ctx.log("  variant {:<10} top-1 {:6.2f}%  {:5.1%} of the teacher's MACs -> {}".format(
            entry["name"], entry["top1"], entry["macs_ratio"], entry["path"]))
    return {"variants": found}


def evalset(ctx: HostContext) -> Dict[str, Any]:
    """eval.npz (preprocessed val images as the models take them, float32 NCHW, and labels), and each
    exported ONNX model's top-1 on exactly those images: the reference each device run of that model
    (or of an engine built from it) is checked against."""
    from ..artifacts import atomic_path, sha256_file
    from .export import onnx_logits

    data, path = ctx.data, ctx.path(layout.EVAL_SET)
    x, y, total = _eval_images(data)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a bare temp name
            np.savez(f, images=x, labels=y)
    scored = [m["path"] for m in ctx.metrics("measure").get("models", [])]
    scored += [v["path"] for v in ctx.metrics("variants").get("variants", [])]
    top1 = {}
    for name in scored:
        chunks = (torch.from_numpy(x[i:i + 64]) for i in range(0, len(x), 64))
        logits = onnx_logits(ctx.path(name), chunks, ctx.threads)
        top1[name] = round(float((logits.argmax(1) == y).mean() * 100.0), 3)
    ctx.log("eval set: {} of {} val images -> {} ({:.1f} MB), the device scores every engine on them".format(
        len(x), total, path, os.path.getsize(path) / 1e6))
    return {"file": layout.EVAL_SET, "images": int(len(x)), "of": int(total), "sha256": sha256_file(path),
            "top1": top1}


def _eval_images(data: DataBundle) -> Tuple[np.ndarray, np.ndarray, int]:
    total = len(data.val)  # type: ignore[arg-type]
    count = max(1, min(total, EVAL_SET_BYTES // (3 * data.image_size * data.image_size * 4)))
    # Evenly spread over the split: a folder-ordered val set (ImageNet's) is sorted by class.
    wanted = set(np.linspace(0, total - 1, count).round().astype(int).tolist())
    images, labels, seen = [], [], 0
    for batch, batch_labels in data.val_loader():
        keep = [i for i in range(batch.shape[0]) if seen + i in wanted]
        seen += batch.shape[0]
        if keep:
            images.append(batch[keep].numpy().astype(np.float32))
            labels.append(batch_labels[keep].numpy().astype(np.int64))
    return np.concatenate(images), np.concatenate(labels), total


def compare(ctx: HostContext) -> Dict[str, Any]:
    from .compare import compare as compare_models

    return compare_models(ctx.model(layout.TEACHER), ctx.model(layout.STUDENT), ctx.data, ctx.recipe,
                          ctx.out_dir, ctx.log)

