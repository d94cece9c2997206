"""The main job: teacher → prune/distill spiral → evaluation, written under one artifacts folder.

Each stage is recorded in `manifest.json` with the hash of what it depends on; a re-run with the
same recipe reuses finished stages, `force=True` recomputes them. `summary.json` gathers the
figures later stages (quantization, ONNX, benchmarks) add to.
"""

import os
import platform
import random
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import __version__
from ..artifacts import Manifest, atomic_path, config_hash, remove_if_exists, run_stage, sha256_file, write_json_atomic
from ..device.bench.environment import cpu_model
from ..errors import EdgekitError
from ..recipe import Recipe
from .compress.distill import train
from .compress.spiral import spiral
from .data import DataBundle, evaluate_top1, load_data
from .models import count_macs_params, load_resnet50_checkpoint, load_student, resnet50, save_student

SUMMARY_SCHEMA = "edgekit.summary/1"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def environment(threads: int) -> Dict[str, Any]:
    import torchvision

    try:
        import torch_pruning
        tp_version = getattr(torch_pruning, "__version__", "unknown")
    except ImportError:
        tp_version = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": threads, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_pruning": tp_version, "edgekit": __version__}




def _agreement(a: torch.nn.Module, b: torch.nn.Module, data: DataBundle) -> float:
    a.eval()
    b.eval()
    same = total = 0
    with torch.no_grad():
        for images, _ in data.val_loader():
            same += int((a(images).argmax(1) == b(images).argmax(1)).sum())
            total += images.shape[0]
    return 100.0 * same / max(total, 1)


STAGES = ("teacher", "compress", "evaluate", "export", "variants", "evalset", "compare")


def run(recipe: Recipe, out_dir: str, force: bool = False, force_stages: Sequence[str] = (),
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the host stages of `recipe` into `out_dir`; return the summary (also in summary.json).

    `force` recomputes every stage; `force_stages` only the named ones (e.g. re-measure `compare`).
    """
    unknown = [name for name in force_stages if name not in STAGES]
    if unknown:
        raise EdgekitError("unknown stage {}; stages are {}".format(unknown[0], ", ".join(STAGES)))
    threads = recipe.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    _seed_everything(recipe.seed)
    os.makedirs(out_dir, exist_ok=True)
    manifest = Manifest(out_dir)
    stages: List[Dict[str, Any]] = []
    cfg = recipe.to_dict()

    log("data: {} ({}x{})".format(recipe.data.dataset, recipe.data.image_size, recipe.data.image_size))
    data = load_data(recipe.data, recipe.seed)
    num_classes = recipe.model.num_classes or data.num_classes
    if num_classes != data.num_classes:
        raise EdgekitError("model.num_classes is {} but the data has {} classes".format(num_classes, data.num_classes))
    log("data: {} train / {} val images, {} classes".format(len(data.train), len(data.val), num_classes))

    # ---- teacher
    checkpoint = recipe.model.checkpoint
    ckpt_digest = sha256_file(checkpoint) if checkpoint and os.path.isfile(checkpoint) else checkpoint
    teacher_key = config_hash({"data": cfg["data"], "model": cfg["model"], "teacher": cfg["teacher"],
                               "seed": recipe.seed, "checkpoint": ckpt_digest, "classes": num_classes})
    teacher_path = os.path.join(out_dir, "teacher.pt")

    def make_teacher() -> Dict[str, Any]:
        if checkpoint:
            log("teacher: loading {}".format(checkpoint))
            model, info = load_resnet50_checkpoint(checkpoint, num_classes, log=log)
            if info["head_replaced"] and not recipe.teacher.train:
                raise EdgekitError("the checkpoint's head was replaced for {} classes, so the teacher must be "
                                   "fine-tuned: set teacher.train: true".format(num_classes))
        else:
            if not recipe.teacher.train:
                raise EdgekitError("no teacher: give model.checkpoint or set teacher.train: true")
            log("teacher: training a ResNet-50 from scratch for {} epochs".format(recipe.teacher.epochs))
            model = resnet50(num_classes=num_classes, zero_init_residual=True)
        history = []
        if recipe.teacher.train and recipe.teacher.epochs > 0:
            history = train(model, data, recipe.teacher.epochs, recipe.teacher.optimizer,
                            checkpoint=os.path.join(out_dir, "teacher.train.pt"), key=teacher_key,
                            seed=recipe.seed, desc="teacher", log=log)
        save_student(teacher_path, model, meta={"role": "teacher", "recipe": recipe.name})
        remove_if_exists(os.path.join(out_dir, "teacher.train.pt"))
        return {"top1": round(evaluate_top1(model, data.val_loader()), 3), "history": history}

    teacher_metrics = run_stage(manifest, "teacher", teacher_key, ["teacher.pt"], make_teacher,
                                force or "teacher" in force_stages, log)
    stages.append({"name": "teacher", "seconds": teacher_metrics["seconds"], "reused": teacher_metrics["reused"]})
    teacher, _ = load_student(teacher_path)
    teacher.eval()

    # ---- compression spiral
    compress_key = config_hash({"teacher": teacher_key, "prune": cfg["prune"], "distill": cfg["distill"],
                                "seed": recipe.seed})
    student_path = os.path.join(out_dir, "student.pt")

    def make_student() -> Dict[str, Any]:
        student, rounds = spiral(teacher, data, recipe, os.path.join(out_dir, "rounds"),
                                 teacher_key=teacher_key, log=log)
        save_student(student_path, student, meta={"role": "student", "recipe": recipe.name,
                                                  "method": recipe.prune.method})
        return {"rounds": rounds}

    rounds_dir = os.path.join(out_dir, "rounds")
    if (force or "compress" in force_stages) and os.path.isdir(rounds_dir):
        shutil.rmtree(rounds_dir)  # --force recomputes the spiral from its first round
    compress_metrics = run_stage(manifest, "compress", compress_key, ["student.pt"], make_student,
                                 force or "compress" in force_stages, log)
    stages.append({"name": "compress", "seconds": compress_metrics["seconds"], "reused": compress_metrics["reused"]})
    student, student_info = load_student(student_path)
    student.eval()

    # ---- evaluation
    def evaluate() -> Dict[str, Any]:
        result = {}
        for role, model in (("teacher", teacher), ("student", student)):
            macs, params = count_macs_params(model, data.image_size)
            macs224, _ = count_macs_params(model, 224)
            result[role] = {"top1": round(evaluate_top1(model, data.val_loader()), 3),
                            "macs": macs, "params": params, "macs_at_224": macs224}
        result["agreement"] = round(_agreement(teacher, student, data), 3)
        return result

    eval_key = config_hash({"teacher": teacher_key, "compress": compress_key,
                            "teacher_sha": sha256_file(teacher_path), "student_sha": sha256_file(student_path)})
    metrics = run_stage(manifest, "evaluate", eval_key, [], evaluate, force or "evaluate" in force_stages, log)
    stages.append({"name": "evaluate", "seconds": metrics["seconds"], "reused": metrics["reused"]})

    # ---- ONNX export, INT8 quantization, TensorRT lint, accuracy and speed of every exported model
    export_key = config_hash({"student_sha": sha256_file(student_path), "data": cfg["data"],
                              "quantize": cfg["quantize"], "bench": cfg["bench"], "seed": recipe.seed,
                              "threads": threads})
    exported: Dict[str, Any] = {}
    if recipe.quantize.enabled:
        outputs = ["model.fp32.onnx", "model.fp16.onnx", "model.int8.qdq.onnx", "model.int8.cpu.onnx", "calib.cache"]
        exported = run_stage(manifest, "export", export_key, outputs,
                             lambda: export_and_measure(student, data, recipe, out_dir, threads, log),
                             force or "export" in force_stages, log)
        stages.append({"name": "export", "seconds": exported["seconds"], "reused": exported["reused"]})

    # ---- the teacher and each intermediate spiral round as FP32 ONNX: the Pareto chart's other points
    variants_key = config_hash({"teacher_sha": sha256_file(teacher_path), "compress": compress_key,
                                "student_sha": sha256_file(student_path), "size": data.image_size})
    variant_list = _variant_sources(out_dir, compress_metrics.get("rounds", []), metrics)
    varied = run_stage(manifest, "variants", variants_key, [v["path"] for v in variant_list],
                       lambda: export_variants(variant_list, out_dir, data, log),
                       force or "variants" in force_stages, log)
    stages.append({"name": "variants", "seconds": varied["seconds"], "reused": varied["reused"]})

    # ---- the val images the device scores every engine on, with each ONNX model's top-1 on them here
    evalset: Dict[str, Any] = {}
    if recipe.quantize.enabled:
        scored = [m["path"] for m in exported.get("models", [])] + [v["path"] for v in varied.get("variants", [])]
        # The models are outputs of the export and variants stages: their keys stand for them.
        evalset_key = config_hash({"export": export_key, "variants": variants_key, "data": cfg["data"],
                                   "models": scored, "bytes": EVAL_SET_BYTES})
        evalset = run_stage(manifest, "evalset", evalset_key, [EVAL_SET_FILE],
                            lambda: export_eval_set(data, out_dir, scored, threads, log),
                            force or "evalset" in force_stages, log)
        stages.append({"name": "evalset", "seconds": evalset["seconds"], "reused": evalset["reused"]})

    compared: Dict[str, Any] = {}
    if recipe.compare.enabled and recipe.quantize.enabled:
        from .compare import compare, format_table

        compare_key = config_hash({"teacher_sha": sha256_file(teacher_path), "student_sha": sha256_file(student_path),
                                   "compare": cfg["compare"], "quantize": cfg["quantize"], "bench": cfg["bench"],
                                   "threads": threads})
        compared = run_stage(manifest, "compare", compare_key, [],
                             lambda: compare(teacher, student, data, recipe, out_dir, log),
                             force or "compare" in force_stages, log)
        stages.append({"name": "compare", "seconds": compared["seconds"], "reused": compared["reused"]})
        log(format_table(compared))

    t, s = metrics["teacher"], metrics["student"]
    summary = {
        "schema": SUMMARY_SCHEMA,
        "recipe": recipe.name,
        "config_hash": config_hash(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input_shape": [1, 3, data.image_size, data.image_size],
        "num_classes": num_classes,
        "teacher": dict(t, path="teacher.pt", history=teacher_metrics.get("history", [])),
        "student": dict(s, path="student.pt", method=recipe.prune.method,
                        macs_ratio=round(s["macs"] / float(t["macs"]), 5),
                        params_ratio=round(s["params"] / float(t["params"]), 5),
                        top1_delta=round(s["top1"] - t["top1"], 3),
                        agreement_with_teacher=metrics["agreement"],
                        width_spec=student_info["width_spec"]),
        "rounds": [{k: v for k, v in r.items() if k not in ("history", "width_spec", "key")}
                   for r in compress_metrics.get("rounds", [])],
        "stages": stages,
        "models": exported.get("models", []),
        "variants": varied.get("variants", []),
        "quantization": exported.get("quantization", {}),
        "eval_set": {k: v for k, v in evalset.items() if k not in ("seconds", "reused")} or None,
        "recipe_config": cfg,
        "environment": environment(threads),
        "command": sys.argv,
    }
    # Keys this run owns are always written (None when skipped), so an older run's figures never linger.
    summary["compare"] = {k: v for k, v in compared.items() if k not in ("seconds", "reused")} if compared else None
    summary_path = os.path.join(out_dir, "summary.json")
    if os.path.exists(summary_path):
        # Later stages (quantization, ONNX, benchmarks) add their own keys: keep them.
        try:
            import json
            with open(summary_path, encoding="utf-8") as f:
                previous = json.load(f)
            for key, value in previous.items():
                summary.setdefault(key, value)
        except (OSError, ValueError):
            pass
    write_json_atomic(summary_path, summary)
    log("teacher: top-1 {:.2f}%, {:.1f} M MACs, {:.2f} M params".format(t["top1"], t["macs"] / 1e6, t["params"] / 1e6))
    log("student: top-1 {:.2f}% ({:+.2f}), {:.1f} M MACs ({:.1%}), {:.2f} M params ({:.1%}), "
        "agrees with the teacher on {:.1f}%".format(
            s["top1"], s["top1"] - t["top1"], s["macs"] / 1e6, s["macs"] / float(t["macs"]),
            s["params"] / 1e6, s["params"] / float(t["params"]), metrics["agreement"]))
    log("wrote {}".format(summary_path))
    return summary


def export_and_measure(student: torch.nn.Module, data: DataBundle, recipe: Recipe, out_dir: str, threads: int,
                       log: Callable[[str], None]) -> Dict[str, Any]:
    """FP32/FP16 ONNX, both INT8 flavours and calib.cache; each linted, its accuracy beside its speed."""
    from ..device.bench.scenarios import single_stream
    from ..device.runtime.onnxrt import OnnxRuntimeRunner
    from ..trtlint import check_tensorrt_compatible, lint
    from .compress.quantize import quantization_error, quantize
    from .export import convert_fp16, export_onnx, file_mb, onnx_logits, verify_onnx

    size = data.image_size
    fp32 = os.path.join(out_dir, "model.fp32.onnx")
    log("export: ONNX opset 17, {0}x{0}, dynamic batch -> {1}".format(size, fp32))
    export_onnx(student, fp32, size)
    # The val split is streamed batch by batch (ImageNet's does not fit in memory at once).
    first_images = next(iter(data.val_loader()))[0]
    val_labels = np.concatenate([labels.numpy() for _, labels in data.val_loader()])
    verify = verify_onnx(fp32, student, first_images[:64], threads)
    convert_fp16(fp32, os.path.join(out_dir, "model.fp16.onnx"))
    calibration = [b.numpy() for b in data.calibration_batches(recipe.data.calibration_samples, seed=recipe.seed)]
    log("quantize: INT8, {} calibration on {} real samples".format(recipe.quantize.method,
                                                                 sum(b.shape[0] for b in calibration)))
    quant = quantize(fp32, out_dir, calibration, recipe.quantize.method, recipe.quantize.trt_version,
                     cpu_reduce_range=recipe.quantize.cpu_reduce_range)
    # What goes to TensorRT must pass the lint; the CPU flavour is for onnxruntime (uint8) by design.
    for name in ("model.fp32.onnx", "model.fp16.onnx", "model.int8.qdq.onnx"):
        check_tensorrt_compatible(os.path.join(out_dir, name))
    report_images = first_images[:recipe.quantize.report_samples].numpy()
    reports = {flavour: quantization_error(fp32, os.path.join(out_dir, "model.int8.{}.onnx".format(flavour)),
                                           report_images, top=10) for flavour in ("qdq", "cpu")}
    with torch.no_grad():
        student.eval()
        student_logits = np.concatenate([student(images).numpy() for images, _ in data.val_loader()])
    student_top1 = float((student_logits.argmax(1) == val_labels).mean() * 100.0)
    sample = {"input": first_images[:1].numpy().astype(np.float32)}
    models = []
    for name, precision, target in (("model.fp32.onnx", "fp32", "tensorrt, onnxruntime"),
                                    ("model.fp16.onnx", "fp16", "tensorrt"),
                                    ("model.int8.qdq.onnx", "int8", "tensorrt (explicit Q/DQ)"),
                                    ("model.int8.cpu.onnx", "int8", "onnxruntime cpu")):
        path = os.path.join(out_dir, name)
        logits = onnx_logits(path, (images for images, _ in data.val_loader()), threads)
        top1 = float((logits.argmax(1) == val_labels).mean() * 100.0)
        with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"], threads=threads) as runner:
            ss = single_stream(runner, sample, warmup=5, min_queries=recipe.bench.min_queries,
                               min_seconds=recipe.bench.min_seconds)
        entry = {"name": name.replace("model.", "").replace(".onnx", ""), "path": name, "precision": precision,
                 "for": target, "top1": round(top1, 3), "top1_delta_vs_pytorch": round(top1 - student_top1, 3),
                 "top1_agreement_vs_pytorch": round(float((logits.argmax(1) == student_logits.argmax(1)).mean()
                                                          * 100.0), 3),
                 "max_abs_diff_vs_pytorch": round(float(np.abs(logits - student_logits).max()), 6),
                 "runtime": "onnxruntime-cpu", "p50_ms": ss["latency"]["p50_ms"], "p99_ms": ss["latency"]["p99_ms"],
                 "size_mb": file_mb(path), "tensorrt_lint": [str(v) for v in lint(path)][:5] or "clean"}
        models.append(entry)
        log("  {:<22} top-1 {:6.2f}% ({:+.2f})  p50 {:7.3f} ms  {:6.2f} MB  {}".format(
            name, top1, top1 - student_top1, entry["p50_ms"], entry["size_mb"], target))
    return {"models": models, "verify": verify,
            "quantization": {"method": quant["method"], "calibration_samples": quant["calibration_samples"],
                             "residual_qdq_added": quant["residual_qdq_added"],
                             "calib_cache": "calib.cache", "calib_cache_tensors": quant["cache_tensors"],
                             "trt_version": recipe.quantize.trt_version,
                             "worst_layers": reports}}



def _variant_sources(out_dir: str, rounds: List[Dict[str, Any]], metrics: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Teacher and every spiral round but the last (that one is the student, exported above)."""
    t = metrics["teacher"]
    found = [{"name": "teacher", "source": "teacher.pt", "top1": t["top1"], "macs": t["macs"], "params": t["params"],
              "macs_ratio": 1.0}]
    for record in rounds[:-1]:
        source = os.path.join("rounds", "round{}.pt".format(record["round"]))
        if os.path.exists(os.path.join(out_dir, source)):
            found.append({"name": "round{}".format(record["round"]), "source": source, "top1": record["top1"],
                          "macs": record["macs"], "params": record["params"], "macs_ratio": record["macs_ratio"]})
    for entry in found:
        entry["path"] = os.path.join("variants", "{}.fp32.onnx".format(entry["name"]))
        entry["precision"] = "fp32"
    return found


def export_variants(variants: List[Dict[str, Any]], out_dir: str, data: DataBundle,
                    log: Callable[[str], None]) -> Dict[str, Any]:
    """Export each variant to FP32 ONNX, checked against PyTorch on a few val images. Its top-1 is the
    PyTorch one measured when it was made (FP32 ONNX agrees to ~1e-5; re-evaluating the full val split
    per variant would cost an ImageNet pass each)."""
    from .export import export_onnx, verify_onnx

    images = next(iter(data.val_loader()))[0][:16]
    for entry in variants:
        model, _ = load_student(os.path.join(out_dir, entry["source"]))
        path = os.path.join(out_dir, entry["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        export_onnx(model, path, data.image_size)
        entry["max_abs_diff_vs_pytorch"] = round(verify_onnx(path, model, images)["max_abs_diff"], 6)
        log("  variant {:<10} top-1 {:6.2f}%  {:5.1%} of the teacher's MACs -> {}".format(
            entry["name"], entry["top1"], entry["macs_ratio"], entry["path"]))
    return {"variants": variants}


EVAL_SET_FILE = "eval.npz"
# The device scores every engine on these images; above this size they are a spread subset of val
# (ImageNet at 224: about 110 images; the digits val split fits whole).
EVAL_SET_BYTES = 64 << 20


def export_eval_set(data: DataBundle, out_dir: str, models: Sequence[str], threads: int,
                    log: Callable[[str], None]) -> Dict[str, Any]:
    """Write eval.npz (preprocessed val images as the models take them, float32 NCHW, and labels)
    and score each exported ONNX model on exactly those images, the reference each device run of
    that model (or of an engine built from it) is checked against."""
    from .export import onnx_logits

    total = len(data.val)  # type: ignore[arg-type]
    per_image = 3 * data.image_size * data.image_size * 4
    count = max(1, min(total, EVAL_SET_BYTES // per_image))
    # Evenly spread over the split: a folder-ordered val set (ImageNet's) is sorted by class.
    wanted = set(np.linspace(0, total - 1, count).round().astype(int).tolist())
    images, labels, seen = [], [], 0
    for batch, batch_labels in data.val_loader():
        keep = [i for i in range(batch.shape[0]) if seen + i in wanted]
        seen += batch.shape[0]
        if keep:
            images.append(batch[keep].numpy().astype(np.float32))
            labels.append(batch_labels[keep].numpy().astype(np.int64))
    x, y = np.concatenate(images), np.concatenate(labels)
    path = os.path.join(out_dir, EVAL_SET_FILE)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a bare temp name
            np.savez(f, images=x, labels=y)
    top1 = {}
    for name in models:
        chunks = (torch.from_numpy(x[i:i + 64]) for i in range(0, len(x), 64))
        logits = onnx_logits(os.path.join(out_dir, name), chunks, threads)
        top1[name] = round(float((logits.argmax(1) == y).mean() * 100.0), 3)
    log("eval set: {} of {} val images -> {} ({:.1f} MB), the device scores every engine on them".format(
        len(x), total, path, os.path.getsize(path) / 1e6))
    return {"file": EVAL_SET_FILE, "images": int(len(x)), "of": int(total), "sha256": sha256_file(path),
            "top1": top1}


def default_out_dir(recipe: Recipe, out: Optional[str]) -> str:
    return out or os.path.join("artifacts", recipe.name)
