import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY

from edgekit.artifacts import sha256_file
from edgekit.host.arch import architecture, load_student
from edgekit.host.models import resnet50
from edgekit.host.pipeline import STAGE_NAMES, run
from edgekit.recipe import load_recipe

pytestmark = pytest.mark.slow


def test_summary_holds_the_figures_the_issue_names(tiny_run):
    out, summary, _ = tiny_run
    with open(os.path.join(out, "summary.json")) as f:
        on_disk = json.load(f)
    assert on_disk["student"]["top1"] == summary["student"]["top1"]
    for role in ("teacher", "student"):
        for key in ("top1", "macs", "params"):
            assert isinstance(on_disk[role][key], (int, float))
    t, s = on_disk["teacher"], on_disk["student"]
    assert s["macs"] <= 0.5 * t["macs"] and s["params"] < t["params"]
    assert list(STAGE_NAMES) == ["teacher", "compress", "evaluate", "export", "quantize", "fallback", "qat", "int8",
                                 "measure", "variants", "evalset", "compare"]
    # QAT is off by default (qat.enabled), so the default job runs every other stage
    assert [st["name"] for st in on_disk["stages"]] == [n for n in STAGE_NAMES if n != "qat"]
    assert on_disk["schema"] == "edgekit.summary/1" and on_disk["quantization"]["calib_cache"] == "calib.cache"
    assert [m["name"] for m in on_disk["models"]] == ["fp32", "fp16", "int8.qdq", "int8.cpu"]
    # the Pareto chart's other points: the teacher and the spiral's intermediate round, as FP32 ONNX
    variants = {v["name"]: v for v in on_disk["variants"]}
    assert sorted(variants) == ["round1", "teacher"]
    assert variants["teacher"]["top1"] == t["top1"] and variants["round1"]["top1"] == on_disk["rounds"][0]["top1"]
    assert variants["round1"]["macs"] == on_disk["rounds"][0]["macs"] > s["macs"]
    for v in variants.values():
        assert os.path.exists(os.path.join(out, v["path"])) and v["max_abs_diff_vs_pytorch"] < 1e-3
    assert all(st["seconds"] >= 0 for st in on_disk["stages"])
    # the images the device scores each engine on: here the whole (small) val split, with every ONNX
    # model's top-1 on them, which is the model's val top-1
    evalset = on_disk["eval_set"]
    with np.load(os.path.join(out, evalset["file"]), allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    assert images.dtype == np.float32 and images.shape[1:] == (3, 16, 16) and labels.shape == (images.shape[0],)
    assert evalset["images"] == evalset["of"] == images.shape[0] and evalset["sha256"] == sha256_file(
        os.path.join(out, "eval.npz"))
    exported = {m["path"]: m["top1"] for m in on_disk["models"]}
    assert {k: v for k, v in evalset["top1"].items() if k in exported} == exported
    assert sorted(evalset["top1"]) == sorted(list(exported) + [v["path"] for v in variants.values()])
    assert [r["round"] for r in on_disk["rounds"]] == [1, 2]
    assert on_disk["rounds"][0]["macs_ratio"] > on_disk["rounds"][1]["macs_ratio"]
    student, info = load_student(os.path.join(out, "student.pt"))
    assert on_disk["student"]["width_spec"] == info["width_spec"] == architecture("resnet50").width_spec(student)
    # the pruned model is smaller on disk too
    assert os.path.getsize(os.path.join(out, "student.pt")) < 0.75 * os.path.getsize(os.path.join(out, "teacher.pt"))
    assert not [p for p in os.listdir(out) if p.endswith(".tmp") or p.endswith(".train.pt")]


def test_a_rerun_reuses_finished_stages(tiny_run):
    out, summary, _ = tiny_run
    lines = []
    again = run(load_recipe("digits", TINY), out, log=lines.append)
    assert [st["reused"] for st in again["stages"]] == [True] * (len(STAGE_NAMES) - 1)  # all but the qat stage
    assert again["student"]["top1"] == summary["student"]["top1"]
    assert any("[compress] up to date, reused" in line for line in lines)


def test_an_interrupted_spiral_resumes_at_the_round_it_lost(tiny_run, tmp_path):
    out, summary, _ = tiny_run
    copy = str(tmp_path / "digits")
    shutil.copytree(out, copy)
    for name in ("round2.pt", "round2.json"):
        os.unlink(os.path.join(copy, "rounds", name))
    os.unlink(os.path.join(copy, "student.pt"))
    lines = []
    again = run(load_recipe("digits", TINY), copy, log=lines.append)
    assert any(line.startswith("round 1/2: reused") for line in lines)
    assert any(line.startswith("round 2/2: prune") for line in lines)
    assert [st["reused"] for st in again["stages"]][:2] == [True, False]
    assert again["student"]["width_spec"] == summary["student"]["width_spec"]  # pruning is deterministic


def test_force_stage_teacher_recomputes_everything_after_it(tiny_run, tmp_path):
    out, summary, _ = tiny_run
    copy = str(tmp_path / "digits")
    shutil.copytree(out, copy)
    lines = []
    again = run(load_recipe("digits", TINY), copy, force_stages=["teacher"], log=lines.append)
    assert [st["name"] for st in again["stages"] if not st["reused"]] == [n for n in STAGE_NAMES if n != "qat"]
    assert not any("up to date, reused" in line for line in lines)
    # the spiral starts over from the new teacher instead of resuming the old one's rounds
    assert any(line.startswith("round 1/2: prune") for line in lines)
    assert not any(line.startswith("round 1/2: reused") for line in lines)


def test_without_quantization_the_fp32_and_fp16_models_are_still_exported(tiny_run, tmp_path):
    out, _, _ = tiny_run
    copy = str(tmp_path / "digits")
    shutil.copytree(out, copy)
    for name in ("model.fp32.onnx", "model.fp16.onnx", "summary.json"):
        os.unlink(os.path.join(copy, name))
    lines = []
    summary = run(load_recipe("digits", TINY + ["quantize.enabled=false"]), copy, log=lines.append)
    ran = {st["name"]: st["reused"] for st in summary["stages"]}
    assert ran == {"teacher": True, "compress": True, "evaluate": True, "export": False, "measure": False,
                   "variants": True, "evalset": False}
    assert os.path.exists(os.path.join(copy, "model.fp32.onnx")) and os.path.exists(os.path.join(copy,
                                                                                                   "model.fp16.onnx"))
    assert [m["name"] for m in summary["models"]] == ["fp32", "fp16"]
    assert summary["quantization"] == {} and summary["compare"] is None
    assert sorted(summary["eval_set"]["top1"]) == sorted(["model.fp32.onnx", "model.fp16.onnx",
                                                          "variants/round1.fp32.onnx", "variants/teacher.fp32.onnx"])


def _write_colour_folder(root, train_per_class=16, val_per_class=4):
    """Three classes a teacher can learn in a few steps: red, green and blue images, with noise."""
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(("red", "green", "blue")):
            folder = os.path.join(root, split, name)
            os.makedirs(folder)
            for i in range(count):
                pixels = rng.randint(0, 96, size=(40, 40, 3))
                pixels[..., c] += 128
                Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, "{}.png".format(i)))


def test_the_readme_example_fine_tunes_a_replaced_head_end_to_end(tmp_path):
    """`edgekit run --recipe imagenet --set data.root=... --set model.checkpoint=...` as the README has it,
    with a 1000-class torchvision checkpoint and a 3-class folder: the teacher is fine-tuned."""
    root = str(tmp_path / "data")
    _write_colour_folder(root)
    ckpt = str(tmp_path / "resnet50.pth")
    torch.manual_seed(0)
    state = resnet50(num_classes=1000).state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, ckpt)  # as DDP saves it
    recipe = load_recipe("imagenet", [
        "data.root=" + root, "model.checkpoint=" + ckpt,
        # test sizes, nothing about the teacher: the recipe's own defaults decide it
        "data.image_size=32", "data.batch_size=8", "data.workers=0", "train.precision=fp32", "prune.rounds=1",
        "distill.epochs_per_round=1", "distill.final_epochs=0", "threads=2", "compare.enabled=false",
        "data.calibration_samples=20", "bench.min_queries=5", "bench.min_seconds=0.05"])
    lines = []
    summary = run(recipe, str(tmp_path / "out"), log=lines.append)
    assert summary["num_classes"] == 3
    assert any("1000-class head" in line for line in lines)
    assert "teacher: fine-tuning the checkpoint and its new head for 5 epochs" in lines
    with open(tmp_path / "out" / "summary.json", encoding="utf-8") as f:
        on_disk = json.load(f)["teacher"]
    assert len(on_disk["history"]) == 5 and on_disk["train"]["precision"] == "fp32"
    assert on_disk["top1"] > 100.0 / 3 + 10  # well above chance (33.3%)
    assert summary["student"]["macs"] <= 0.5 * summary["teacher"]["macs"]
    assert [m["name"] for m in summary["models"]] == ["fp32", "fp16", "int8.qdq", "int8.cpu"]
    from edgekit.host.data import load_data

    # calibration sees training images as evaluation does: no random crops, so it is repeatable
    data = load_data(recipe.data, recipe.seed)
    first, again = (torch.cat(list(data.calibration_batches(8))) for _ in range(2))
    assert first.shape == (8, 3, 32, 32) and torch.equal(first, again)
    teacher, _ = load_student(str(tmp_path / "out" / "teacher.pt"))
    assert teacher.fc.out_features == 3


def test_calibration_batches_are_a_fixed_subset_of_real_training_images():
    from edgekit.host.data import load_data
    from edgekit.recipe import DataConfig

    data = load_data(DataConfig(image_size=16), seed=0)
    first = torch.cat(list(data.calibration_batches(100, batch_size=32)))
    again = torch.cat(list(data.calibration_batches(100, batch_size=32)))
    assert first.shape == (100, 3, 16, 16) and torch.equal(first, again)
    train_images = torch.stack([data.train[i][0] for i in range(len(data.train))])
    # every calibration image is one of the training images
    assert all((train_images == img).flatten(1).all(1).any() for img in first[:10])
    assert torch.cat(list(data.calibration_batches(10_000))).shape[0] == len(data.train)
