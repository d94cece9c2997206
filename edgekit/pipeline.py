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
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from . import __version__
from .artifacts import Manifest, config_hash, run_stage, sha256_file, write_json_atomic
from .compress.distill import train
from .compress.spiral import spiral
from .data import DataBundle, evaluate_top1, load_data
from .errors import EdgekitError
from .models import count_macs_params, load_resnet50_checkpoint, load_student, resnet50, save_student
from .recipe import Recipe

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
            "machine": platform.machine(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
            "threads": threads, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_pruning": tp_version, "edgekit": __version__}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _agreement(a: torch.nn.Module, b: torch.nn.Module, data: DataBundle) -> float:
    a.eval()
    b.eval()
    same = total = 0
    with torch.no_grad():
        for images, _ in data.val_loader():
            same += int((a(images).argmax(1) == b(images).argmax(1)).sum())
            total += images.shape[0]
    return 100.0 * same / max(total, 1)


def run(recipe: Recipe, out_dir: str, force: bool = False,
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the host stages of `recipe` into `out_dir`; return the summary (also in summary.json)."""
    threads = recipe.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    _seed_everything(recipe.seed)
    os.makedirs(out_dir, exist_ok=True)
    manifest = Manifest(out_dir)
    stages = []  # type: List[Dict[str, Any]]
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
        _remove(os.path.join(out_dir, "teacher.train.pt"))
        return {"top1": round(evaluate_top1(model, data.val_loader()), 3), "history": history}

    teacher_metrics = run_stage(manifest, "teacher", teacher_key, ["teacher.pt"], make_teacher, force, log)
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
    if force and os.path.isdir(rounds_dir):
        shutil.rmtree(rounds_dir)  # --force recomputes the spiral from its first round
    compress_metrics = run_stage(manifest, "compress", compress_key, ["student.pt"], make_student, force, log)
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
    metrics = run_stage(manifest, "evaluate", eval_key, [], evaluate, force, log)
    stages.append({"name": "evaluate", "seconds": metrics["seconds"], "reused": metrics["reused"]})

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
        "recipe_config": cfg,
        "environment": environment(threads),
        "command": sys.argv,
    }
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


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def default_out_dir(recipe: Recipe, out: Optional[str]) -> str:
    return out or os.path.join("artifacts", recipe.name)
