"""The training loop's device, precision and layout paths on what this machine has (CPU here)."""

import copy

import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.host.compress.distill import schedule_factor, train
from edgekit.host.data import load_data
from edgekit.host.models import resnet50
from edgekit.recipe import DataConfig, OptimizerConfig, TrainConfig, load_recipe


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(image_size=16, max_train_samples=32, max_val_samples=16, batch_size=16), seed=0)


def _tiny_resnet():
    torch.manual_seed(0)
    return resnet50(num_classes=10)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precisions_train_on_cpu_with_channels_last(tmp_path, data, precision):
    model = _tiny_resnet()
    teacher = copy.deepcopy(model).eval()
    before = copy.deepcopy(model.state_dict())
    cfg = TrainConfig(device="cpu", precision=precision, channels_last=True, log_every=1)
    history = train(model, data, 1, OptimizerConfig(name="sgd", lr=0.01), checkpoint=str(tmp_path / "c.pt"),
                    key="k", seed=0, desc=precision, teacher=teacher, alpha=0.5, temperature=2.0,
                    log=lambda m: None, train_cfg=cfg)
    assert len(history) == 1 and history[0]["loss"] == history[0]["loss"]  # finite, not NaN
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())
    assert changed
    # Both models come back as they went in: CPU, fp32, default layout (export traces them).
    for m in (model, teacher):
        w = m.conv1.weight
        assert w.device.type == "cpu" and w.dtype == torch.float32 and w.is_contiguous()
    # the teacher is frozen: its weights did not move
    assert torch.equal(teacher.conv1.weight, before["conv1.weight"])


def test_schedule_is_a_function_of_progress():
    cfg = OptimizerConfig(schedule="cosine")
    f = schedule_factor(cfg, 100)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    one = schedule_factor(OptimizerConfig(schedule="onecycle", warmup_fraction=0.2), 10)
    assert one(0) == pytest.approx(0.04) and one(2) == pytest.approx(1.0)


def test_a_diverging_loss_is_a_user_error(tmp_path, data):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    with pytest.raises(EdgekitError, match="lower the learning rate"):
        train(model, data, 1, OptimizerConfig(), checkpoint=str(tmp_path / "c.pt"), key="k", seed=0,
              desc="nan", log=lambda m: None, train_cfg=TrainConfig(device="cpu", log_every=1))


def test_recipe_train_section_is_validated():
    recipe = load_recipe("digits", ["train.precision=bf16", "train.log_every=10", "train.lr_scaling=none"])
    assert (recipe.train.precision, recipe.train.log_every, recipe.train.lr_scaling) == ("bf16", 10, "none")
    assert recipe.train.device == "auto" and recipe.train.channels_last is None and not recipe.train.compile
    with pytest.raises(EdgekitError, match="train.precision must be one of"):
        load_recipe("digits", ["train.precision=fp8"])
    with pytest.raises(EdgekitError, match="train.log_every must be at least 1"):
        load_recipe("digits", ["train.log_every=0"])
    with pytest.raises(EdgekitError, match="unknown key 'train.gpus'"):
        load_recipe("digits", ["train.gpus=2"])


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_training_with_autocast_and_compile(tmp_path, data, precision):
    model = _tiny_resnet()
    teacher = copy.deepcopy(model)
    cfg = TrainConfig(device="cuda", precision=precision, compile=precision == "bf16", log_every=1)
    history = train(model, data, 2, OptimizerConfig(name="sgd", lr=0.01), checkpoint=str(tmp_path / "c.pt"),
                    key="k", seed=0, desc=precision, teacher=teacher, alpha=0.5, temperature=2.0,
                    log=lambda m: None, train_cfg=cfg)
    assert len(history) == 2 and all(h["loss"] == h["loss"] for h in history)
    assert model.conv1.weight.device.type == "cpu" and model.conv1.weight.is_contiguous()
    assert teacher.conv1.weight.device.type == "cpu"


@pytest.mark.gpu
def test_evaluation_on_cuda_matches_cpu(data):
    from edgekit.host.data import evaluate_top1

    model = _tiny_resnet()
    cpu = evaluate_top1(model, data.val_loader())
    gpu = evaluate_top1(model, data.val_loader(), torch.device("cuda"))
    assert gpu == pytest.approx(cpu, abs=100.0 / 16 + 1e-6)  # at most one image flips on TF32
    assert model.conv1.weight.device.type == "cpu"
