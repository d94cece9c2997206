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
from .arch import architecture, count_macs_params, load_student, save_student
from .data import DataBundle, evaluate_top1, load_data, predict

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
        # Read before the cache: a stage that uses the data must declare it, even when an earlier one loaded it.
        _ = self.recipe.data, self.recipe.seed
        return self.cache("data", self._load_data)

    @property
    def num_classes(self) -> int:
        wanted, found = self.recipe.model.num_classes, self.data.num_classes
        if wanted and wanted != found:
            raise EdgekitError("model.num_classes is {} but the data has {} classes".format(wanted, found))
        return wanted or found

    def model(self, name: str) -> torch.nn.Module:
        """teacher.pt / student.pt as saved by their stage, in eval mode (loaded once)."""
        return self.cache(name, lambda: load_student(self.path(name))[0].eval())

    def _load_data(self) -> DataBundle:
        recipe = self.recipe
        self.log("data: {} ({}x{})".format(recipe.data.dataset, recipe.data.image_size, recipe.data.image_size))
        data = load_data(recipe.data, recipe.seed)  # only data and seed: whichever stage first uses it loads it
        self.log("data: {} train / {} val images, {} classes".format(len(data.train), len(data.val),
                                                                     data.num_classes))
        return data


# --------------------------------------------------------------------------- teacher, spiral, evaluation

def teacher(ctx: HostContext) -> Dict[str, Any]:
    from .train import Checkpoint, CrossEntropy, Trainer, for_stage

    recipe, num_classes = ctx.recipe, ctx.num_classes
    arch, tcfg, checkpoint = architecture(recipe.model.arch), recipe.teacher, recipe.model.checkpoint
    head_replaced = False
    if checkpoint:
        ctx.log("teacher: loading {}".format(checkpoint))
        model, info = arch.load_checkpoint(checkpoint, num_classes, log=ctx.log)
        head_replaced = info["head_replaced"]
        if head_replaced and tcfg.train is False:
            raise EdgekitError("the checkpoint's head was replaced for {} classes, so the teacher must be "
                               "fine-tuned: set teacher.train: true (or leave it unset)".format(num_classes))
    elif tcfg.train is False:
        raise EdgekitError("no teacher: give model.checkpoint or set teacher.train: true")
    else:
        model = arch.build(num_classes)
    history: List[Dict[str, Any]] = []
    resume = ctx.path(layout.TEACHER.replace(".pt", ".train.pt"))
    if tcfg.trains(bool(checkpoint), head_replaced):
        epochs = tcfg.epochs_for(bool(checkpoint))
        what = "training a {} from scratch".format(arch.title)
        if checkpoint:
            what = "fine-tuning the checkpoint" + (" and its new head" if head_replaced else "")
        ctx.log("teacher: {} for {} epochs".format(what, epochs))
        train_cfg, placement = for_stage(recipe.train)
        ctx.log(placement.line())
        trainer = Trainer(CrossEntropy(tcfg.optimizer.label_smoothing), tcfg.optimizer, desc="teacher",
                          train_cfg=train_cfg, log=ctx.log)
        history = trainer.fit(model, ctx.data, epochs, seed=recipe.seed, checkpoint=Checkpoint(resume, ctx.key))
    if ctx.world.is_writer:
        save_student(ctx.path(layout.TEACHER), model, arch, meta={"role": "teacher", "recipe": recipe.name,
                                                                  "image_size": recipe.data.image_size})
        if os.path.exists(resume):
            os.unlink(resume)
    ctx.forget(layout.TEACHER)
    return {"top1": round(evaluate_top1(model, ctx.data.val_loader()), 3), "history": history,
            "num_classes": num_classes, "train": _training(ctx) if history else None}


def _training(ctx: HostContext) -> Dict[str, Any]:
    """Where and how a stage trained: kept with its metrics, so a reused stage still says how it was made."""
    from .train import for_stage

    _, placement = for_stage(ctx.recipe.train)  # the precision that ran (bf16 falls back on some CPUs)
    return {**placement.record(), "world_size": int(getattr(ctx.world, "world_size", 1)),
            "global_batch": ctx.recipe.data.batch_size * int(getattr(ctx.world, "world_size", 1)),
            "compile": ctx.recipe.train.compile}


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
        save_student(ctx.path(layout.STUDENT), student, architecture(recipe.model.arch),
                     meta={"role": "student", "recipe": recipe.name, "method": recipe.prune.method,
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


# INT8 stages in order, with the kinds of layout.int8_stage_file each writes: the `int8` stage ships the
# files of the last one that ran, kind by kind (QAT keeps the fallback's kept layers, so their precisions).
INT8_STAGES = (("quantize", ("qdq", "cpu", "cache")), ("fallback", ("qdq", "cpu", "layers")),
               ("qat", ("qdq", "cpu", "cache", "fp32")))


def _int8_paths(ctx: HostContext, stage: str) -> Dict[str, str]:
    return {kind: ctx.path(layout.int8_stage_file(stage, kind)) for kind in dict(INT8_STAGES)[stage]}


def _val_batches(ctx: HostContext) -> Any:
    return lambda: ((x.numpy(), y.numpy()) for x, y in ctx.data.val_loader())


def calibration_images(ctx: HostContext, held_out: int = 0) -> List[np.ndarray]:
    """The calibration batches (a fixed subset of training images for data.calibration_samples and the
    seed); with `held_out`, that many further images of the same subset's order, never calibrated on."""
    calibrated = ctx.recipe.data.calibration_samples
    batches = [b.numpy() for b in ctx.data.calibration_batches(calibrated + held_out, seed=ctx.recipe.seed)]
    images = np.concatenate(batches)
    if not held_out:
        return batches
    return [images[calibrated:]] if len(images) > calibrated else []


def quantize(ctx: HostContext) -> Dict[str, Any]:
    """One calibration; every method's Q/DQ model scored on the val split (the calibrator table); the
    PTQ models of the chosen method and calib.cache; the TensorRT model linted; worst layers by SQNR."""
    from ..trtlint import check_tensorrt_compatible
    from .compress.quantize import quantization_error
    from .compress.quantize import quantize as quantize_int8
    from .compress.quantize.evaluate import top1

    q = ctx.recipe.quantize
    calibration = calibration_images(ctx)
    ctx.log("quantize: INT8, {} calibration on {} real samples{}".format(
        q.method, sum(b.shape[0] for b in calibration), ", every method scored on val" if q.compare_methods else ""))
    fp32, paths = ctx.path(layout.FP32), _int8_paths(ctx, "quantize")
    paths["ranges"] = ctx.path(layout.CALIB_RANGES)
    val = _val_batches(ctx) if q.compare_methods else None
    quant = quantize_int8(fp32, ctx.out_dir, calibration, q.method, q.trt_version, cpu_reduce_range=q.cpu_reduce_range,
                          per_channel=q.per_channel, evaluation=val, threads=ctx.threads, paths=paths)
    check_tensorrt_compatible(paths["qdq"])  # the CPU flavour is for onnxruntime (uint8) by design
    fp32_top1 = top1(fp32, val, ctx.threads) if val else None
    for name, score in quant["methods"].items():
        chosen = "  <- " + quant["why"] if name == quant["method"] else ""
        ctx.log("  {:<18} top-1 {:6.2f}%{}".format(name, score, chosen))
    images = next(iter(ctx.data.val_loader()))[0][:q.report_samples].numpy()
    reports = {kind: quantization_error(fp32, paths[kind], images, top=10) for kind in ("qdq", "cpu")}
    return {"quantization": {"method": quant["method"], "requested": q.method, "why": quant["why"],
                             "methods_top1": quant["methods"], "fp32_top1": fp32_top1,
                             "per_channel": q.per_channel, "calibration_samples": quant["calibration_samples"],
                             "residual_qdq_added": quant["residual_qdq_added"],
                             "quantized_convs": quant["quantized_convs"], "calib_ranges": layout.CALIB_RANGES,
                             "calib_cache": layout.CALIB_CACHE, "calib_cache_tensors": quant["cache_tensors"],
                             "trt_version": q.trt_version,
                             "worst_layers": reports}}


def fallback(ctx: HostContext) -> Dict[str, Any]:
    """Per-layer fallback: sensitivity (only when PTQ misses the budget), the fewest layers kept in float
    greedily, each flavour written (Q/DQ without them, CPU excluding them, TensorRT layer precisions),
    the twin check, and the latency the kept layers cost, measured side by side."""
    import onnx

    from ..artifacts import write_json_atomic
    from ..trtlint import check_tensorrt_compatible
    from .compress.quantize import calibration_ranges
    from .compress.quantize.evaluate import top1
    from .compress.quantize.qdq import keep_float, layer_precisions

    cfg = ctx.recipe.fallback
    fp32_path, paths = ctx.path(layout.FP32), _int8_paths(ctx, "fallback")
    qdq, fp32 = onnx.load(_int8_paths(ctx, "quantize")["qdq"]), onnx.load(fp32_path)
    val = _val_batches(ctx)
    fp32_top1 = ctx.metrics("quantize")["quantization"].get("fp32_top1") or top1(fp32_path, val, ctx.threads)
    result = _kept_layers(ctx, qdq, fp32_path, fp32_top1, val)
    kept = result["kept"]
    ranges = calibration_ranges(ctx.path(layout.CALIB_RANGES))
    _save_model(keep_float(qdq, kept), paths["qdq"])
    result["cpu"] = _cpu_flavour(ctx, fp32_path, paths["cpu"], ranges, result, val)
    check_tensorrt_compatible(paths["qdq"])
    precisions = layer_precisions(fp32, kept)
    write_json_atomic(paths["layers"], {"schema": "edgekit.layer_precisions/1", "constraints": "obey",
                                        "precisions": precisions, "onnx_nodes": kept})
    result["twin"] = twin = _twin(ctx, fp32, ranges, kept, paths["qdq"], val)
    if twin["onnxruntime_optimized_gap"] > twin["tolerance"]:
        ctx.log("fallback: note: onnxruntime's optimized CPU kernels score the Q/DQ model {:.2f}%, {:.2f} points from "
                "its own semantics ({:.2f}%, what TensorRT computes); the measure stage reports the former".format(
                    twin["onnxruntime_optimized_top1"], twin["onnxruntime_optimized_gap"], twin["model_top1"]))
    # timed here on the onnxruntime CPU flavours: the TensorRT Q/DQ flavour is not built to run fast on a CPU
    result["latency"] = _side_by_side(ctx, {"ptq": _int8_paths(ctx, "quantize")["cpu"], "fallback": paths["cpu"]}) \
        if result["cpu"]["excluded"] else None
    result["tensorrt_layer_precisions"] = precisions
    ctx.log("fallback: {} layer(s) kept in FP16 -> INT8 top-1 {:.2f}% (PTQ {:.2f}%, FP32 {:.2f}%, budget {}); the "
            "CPU flavour {:.2f}% with {} left in float".format(len(kept), result["top1_after"], result["top1_before"],
                                                           fp32_top1, cfg.max_drop, result["cpu"]["top1"],
                                                           len(result["cpu"]["excluded"])))
    return {"fallback": result}


def _cpu_flavour(ctx: HostContext, fp32_path: str, dst: str, ranges: Any, result: Dict[str, Any],
                 val: Any) -> Dict[str, Any]:
    from .compress.quantize.fallback import cpu_flavour

    q = ctx.recipe.quantize
    return cpu_flavour(fp32_path, dst, ranges, result, val, q.per_channel, q.cpu_reduce_range, ctx.threads, ctx.log)


def _save_model(model: Any, path: str) -> None:
    import onnx

    from ..artifacts import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(model, tmp)


def _kept_layers(ctx: HostContext, qdq: Any, fp32_path: str, fp32_top1: float, val: Any) -> Dict[str, Any]:
    from .compress.quantize.fallback import fallback_to_budget

    cfg = ctx.recipe.fallback
    return fallback_to_budget(qdq, fp32_path, val, lambda: _held_out(ctx), fp32_top1, cfg.max_drop, ctx.threads,
                              ctx.log)


def _held_out(ctx: HostContext) -> np.ndarray:
    held = calibration_images(ctx, held_out=ctx.recipe.fallback.samples)
    if not held:
        raise EdgekitError("fallback.samples: no training images left beyond the {} calibration samples".format(
            ctx.recipe.data.calibration_samples))
    return held[0]


def _twin(ctx: HostContext, fp32: Any, ranges: Dict[str, Any], kept: List[str], qdq_path: str,
          val: Any) -> Dict[str, Any]:
    from .compress.quantize.twin import ptq_twin

    return ptq_twin(fp32, ranges, kept, ctx.recipe.quantize.per_channel, qdq_path, val, ctx.threads)


def _side_by_side(ctx: HostContext, paths: Dict[str, str]) -> Dict[str, Any]:
    from .compress.quantize.evaluate import side_by_side_p50

    bench = ctx.recipe.bench
    sample = next(iter(ctx.data.val_loader()))[0][:1].numpy()
    return side_by_side_p50(paths, sample, ctx.bench_threads, bench.min_queries, bench.min_seconds)


def qat(ctx: HostContext) -> Dict[str, Any]:
    """QAT with distillation (QAD) from the fallback's INT8 model (its PTQ scales, its kept layers): Model
    Optimizer's fake-quantized student trained by the Trainer with the KD loss (resumable, DDP), then
    exported in the PTQ flavours' placement, linted and twin-checked against the PyTorch model."""
    import onnx

    from .compress.distill import distill
    from .compress.quantize import qat as qad
    from .train import for_stage

    recipe, cfg = ctx.recipe, ctx.recipe.qat
    fp32 = onnx.load(ctx.path(layout.FP32))
    model = qad.qat_model(ctx.model(layout.STUDENT), fp32, onnx.load(_int8_paths(ctx, "fallback")["qdq"]),
                          recipe.quantize.per_channel, cfg.learn_scales)
    alpha = recipe.distill.alpha if cfg.alpha is None else cfg.alpha
    temperature = recipe.distill.temperature if cfg.temperature is None else cfg.temperature
    kept = len([c for c in model.convs if c not in _quantized_convs(model)])
    ctx.log("qat: {} epoch(s) of distillation (alpha {}, T {}) from the PTQ scales ({}), {} activation quantizer(s), "
            "{} convolution(s) kept in float (Model Optimizer's quantized convolutions)".format(
                cfg.epochs, alpha, temperature, "learned" if cfg.learn_scales else "held", len(model.quantizers),
                kept))
    train_cfg, placement = for_stage(recipe.train)
    ctx.log(placement.line())
    resume = ctx.path(layout.int8_stage_file("qat", "fp32").replace(".fp32.onnx", ".train.pt"))
    history = distill(model.model, ctx.model(layout.TEACHER), ctx.data, cfg.epochs, cfg.optimizer, alpha, temperature,
                      checkpoint=resume, key=ctx.key, seed=recipe.seed, desc="qat", log=ctx.log, train_cfg=train_cfg)
    result: Dict[str, Any] = {"epochs": cfg.epochs, "alpha": alpha, "temperature": temperature, "history": history,
                              "train": _training(ctx), "started_from": layout.int8_stage_file("fallback", "qdq")}
    if ctx.world.is_writer:
        result.update(_qat_export(ctx, model, fp32))
        if os.path.exists(resume):
            os.unlink(resume)
    return {"qat": result}


def _quantized_convs(model: Any) -> List[str]:
    return [name for name in model.convs
            if getattr(model.model.get_submodule(name).input_quantizer, "is_enabled", True)]


def _qat_export(ctx: HostContext, model: Any, fp32: Any) -> Dict[str, Any]:
    """Every QAT flavour from the FP32 graph holding the trained weights, by PTQ's own writers; the lint;
    the twin check (the PyTorch fake-quant model's top-1 against the Q/DQ ONNX's in onnxruntime)."""
    import json

    from ..trtlint import check_tensorrt_compatible
    from .compress.quantize import _graph_tensors, calibration_ranges, write_trt_calibration_cache
    from .compress.quantize import qat as qad
    from .compress.quantize.evaluate import top1
    from .compress.quantize.fallback import cpu_flavour
    from .compress.quantize.qdq import write_tensorrt
    from .compress.quantize.twin import check_twin
    from .export import check_onnx_matches

    q, paths = ctx.recipe.quantize, _int8_paths(ctx, "qat")
    ptq = calibration_ranges(ctx.path(layout.CALIB_RANGES))
    ranges = qad.learned_ranges(model, ptq)
    trained = qad.trained_fp32(model, fp32, ctx.data.image_size)
    _save_model(trained, paths["fp32"])
    verify = check_onnx_matches(paths["fp32"], qad.float_student(model), next(iter(ctx.data.val_loader()))[0][:64],
                                ctx.threads)
    with open(_int8_paths(ctx, "fallback")["layers"], encoding="utf-8") as f:
        kept = json.load(f)["onnx_nodes"]
    write_tensorrt(paths["fp32"], paths["qdq"], ranges, q.per_channel, keep=kept)
    before, val = ctx.metrics("fallback")["fallback"], _val_batches(ctx)
    # the CPU flavour searches its own float layers again, on the trained weights and learned scales
    cpu = cpu_flavour(paths["fp32"], paths["cpu"], ranges, before, val, q.per_channel, q.cpu_reduce_range,
                      ctx.threads, ctx.log)
    tensors = write_trt_calibration_cache(paths["cache"], ranges, _graph_tensors(trained), q.trt_version)
    check_tensorrt_compatible(paths["qdq"])
    images = np.concatenate([x for x, _ in val()])
    onnx_top1 = top1(paths["qdq"], val, ctx.threads)
    twin = check_twin(qad.pytorch_top1(model.model, ctx.data.val_loader()), onnx_top1, images,
                      "PyTorch fake-quant (Model Optimizer)", layout.int8_stage_file("qat", "qdq"))
    changed = max((abs(max(map(abs, ranges[t])) - max(map(abs, ptq[t]))) / (max(map(abs, ptq[t])) or 1.0)
                   for t in model.quantizers), default=0.0)
    ctx.log("qat: INT8 top-1 {:.2f}% (PTQ {:.2f}%, fallback {:.2f}%, FP32 {:.2f}%); twin gap {:.2f}; the CPU flavour "
            "{:.2f}% with {} left in float".format(onnx_top1, before["top1_before"], before["top1_after"],
                                                  before["fp32_top1"], twin["gap"], cpu["top1"], len(cpu["excluded"])))
    return {"top1": onnx_top1, "fp32_top1": before["fp32_top1"], "ptq_top1": before["top1_before"],
            "fallback_top1": before["top1_after"], "top1_delta_vs_fp32": round(onnx_top1 - before["fp32_top1"], 3),
            "kept": kept, "cpu": cpu, "twin": twin, "verify": verify, "calib_cache_tensors": tensors,
            "activation_quantizers": len(model.quantizers), "max_relative_scale_change": round(changed, 6)}


def int8(ctx: HostContext) -> Dict[str, Any]:
    """The INT8 files the run ships (model.int8.qdq.onnx, model.int8.cpu.onnx, calib.cache,
    layer_precisions.json, model.int8.fp32.onnx): copies of the last INT8 stage's that ran."""
    from ..artifacts import atomic_path

    shipped = {}
    for kind, name in layout.SHIPPED_INT8.items():
        stage = next((s for s, kinds in reversed(INT8_STAGES) if kind in kinds and ctx.ran(s)), None)
        if stage is None and kind != "fp32":
            raise EdgekitError("no INT8 stage wrote the {} file; run the quantize stage".format(kind))
        # PTQ quantizes the exported FP32 graph itself; QAT writes its trained one
        source = layout.FP32 if stage is None else layout.int8_stage_file(stage, kind)
        with atomic_path(ctx.path(name)) as tmp:
            shutil.copyfile(ctx.path(source), tmp)
        shipped[name] = source
    return {"int8": {"from": shipped}}


def exported_models(ctx: HostContext) -> List[layout.ModelFile]:
    """The models this run exported: FP32 and FP16 always, INT8 when the int8 stage shipped them."""
    return [m for m in layout.MODELS if m.precision != "int8" or ctx.ran("int8")]


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
            "top1": top1, "preprocessing": data.preprocessing}


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

