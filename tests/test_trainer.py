"""The Trainer's parts: pluggable losses (feature KD with an adapter), the callback hooks, the checkpoint
key, the throughput and ETA lines, and the training precision resolved for the device."""

import dataclasses
import re
import time
import types

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from edgekit.host.data import load_data
from edgekit.host.train import (
    Callback,
    Checkpoint,
    CrossEntropy,
    FeatureKD,
    LogitKD,
    Trainer,
    for_stage,
    resolve_precision,
)
from edgekit.host.train import placement as placement_module
from edgekit.host.train.telemetry import Window, eta_line, format_eta, format_rate, throughput_line
from edgekit.recipe import DataConfig, OptimizerConfig, TrainConfig, load_recipe
from edgekit.stages import World

CPU = TrainConfig(device="cpu", log_every=1)


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(image_size=8, max_train_samples=64, max_val_samples=32, batch_size=16), seed=0)


def _net(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(width * 4, 10))


def _quiet(_message):
    pass


def _feature_distance(loss: FeatureKD, student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> float:
    """MSE between the adapted student's conv output and the teacher's, measured outside the Trainer."""
    with torch.no_grad():
        adapted = loss.adapters["0"](student[0](images))
        return float(nn.functional.mse_loss(adapted, teacher[0](images)))


class _Distances(Callback):
    def __init__(self, loss, teacher, images):
        self.loss, self.teacher, self.images, self.found = loss, teacher, images, []

    def on_epoch_end(self, run, entry):
        self.found.append(_feature_distance(self.loss, run.model, self.teacher, self.images))


def test_feature_kd_learns_an_adapter_and_pulls_the_student_towards_the_teacher(tmp_path, data):
    teacher, student = _net(16, 0).eval(), _net(8, 1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss = FeatureKD(teacher, {"0": "0"}, weight=1.0, alpha=0.5, temperature=2.0)
    distances = _Distances(loss, teacher, next(iter(data.val_loader()))[0])
    trainer = Trainer(loss, OptimizerConfig(name="adamw", lr=1e-2, schedule="constant"), desc="fkd",
                      train_cfg=CPU, callbacks=[distances], log=_quiet)
    history = trainer.fit(student, data, 3, seed=0, checkpoint=Checkpoint(str(tmp_path / "f.pt"), "k"))
    adapter = loss.adapters["0"]
    assert isinstance(adapter, nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (8, 16)
    assert distances.found[-1] < 0.7 * distances.found[0], distances.found
    assert len(history) == 3 and all(h["loss"] == h["loss"] for h in history)
    # the adapter is saved with the model; the teacher is frozen and its hooks are gone
    state = torch.load(str(tmp_path / "f.pt"), weights_only=True)
    assert set(state["loss"]) == {"0.weight"} and torch.equal(state["loss"]["0.weight"], adapter.weight)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher[0]._forward_hooks and not student[0]._forward_hooks


def test_equal_widths_need_no_adapter_and_unknown_modules_fail_plainly(tmp_path, data):
    loss = FeatureKD(_net(8, 0), {"4": "4"})
    Trainer(loss, OptimizerConfig(), train_cfg=CPU, log=_quiet).fit(_net(8, 1), data, 1, seed=0)
    assert isinstance(loss.adapters["4"], nn.Identity)
    with pytest.raises(AttributeError):
        Trainer(FeatureKD(_net(8, 0), {"9": "0"}), OptimizerConfig(), train_cfg=CPU, log=_quiet).fit(
            _net(8, 1), data, 1, seed=0)


class _Recorder(Callback):
    def __init__(self):
        self.seen = []

    def on_fit_start(self, run):
        self.seen.append("fit_start")

    def on_epoch_start(self, run):
        self.seen.append("epoch_start {}".format(run.epoch))

    def on_after_backward(self, run):
        assert all(p.grad is not None for p in run.model.parameters())
        self.seen.append("backward")

    def on_step_end(self, run):
        self.seen.append("step {}".format(run.step))

    def on_epoch_end(self, run, entry):
        self.seen.append("epoch_end {}".format(entry["epoch"]))

    def on_fit_end(self, run):
        self.seen.append("fit_end")


def test_callbacks_see_every_hook_in_order(data):
    recorder = _Recorder()
    Trainer(CrossEntropy(), OptimizerConfig(), train_cfg=CPU, callbacks=[recorder], log=_quiet).fit(
        _net(4, 0), data, 2, seed=0)
    per_epoch = [item for step in range(1, 5) for item in ("backward", "step {}".format(step))]
    assert recorder.seen == (["fit_start", "epoch_start 0"] + per_epoch + ["epoch_end 1", "epoch_start 1"]
                             + per_epoch + ["epoch_end 2", "fit_end"])


class _Stop(Exception):
    pass


class _StopAt(Callback):
    def __init__(self, steps):
        self.steps, self.count = steps, 0

    def on_step_end(self, run):
        self.count += 1
        if self.count == self.steps:
            raise _Stop()


def test_a_changed_loss_does_not_resume_a_checkpoint_of_the_old_one(tmp_path, data):
    path = str(tmp_path / "c.pt")
    with pytest.raises(_Stop):
        Trainer(CrossEntropy(), OptimizerConfig(), train_cfg=CPU, callbacks=[_StopAt(5)], log=_quiet).fit(
            _net(4, 0), data, 2, seed=0, checkpoint=Checkpoint(path, "k"))
    messages = []
    Trainer(LogitKD(_net(4, 2), 0.5, 2.0), OptimizerConfig(), train_cfg=CPU, log=messages.append).fit(
        _net(4, 0), data, 2, seed=0, checkpoint=Checkpoint(path, "k"))
    assert not any("resuming" in m for m in messages)
    # ... while the same loss, optimizer and epochs resume it (a test of the positive case is in test_distill)
    messages.clear()
    with pytest.raises(_Stop):
        Trainer(CrossEntropy(), OptimizerConfig(), train_cfg=CPU, callbacks=[_StopAt(5)], log=_quiet).fit(
            _net(4, 0), data, 2, seed=0, checkpoint=Checkpoint(path, "k"))
    Trainer(CrossEntropy(), OptimizerConfig(), train_cfg=CPU, log=messages.append).fit(
        _net(4, 0), data, 2, seed=0, checkpoint=Checkpoint(path, "k"))
    assert any("resuming after epoch 1/2" in m for m in messages)


# --------------------------------------------------------------------------- throughput and ETA lines

def test_slow_rates_never_print_as_zero():
    # one ResNet-50 step at batch 8 in 12.7 s: the "step 0 img/s" a bf16 CPU run printed
    window = Window(steps=1, seconds=12.7, waited=0.0, batch_size=8)
    line = throughput_line("round 1 distill", window, None, 1)
    assert "step 0.63 img/s, together 0.63 img/s" in line and " 0 img/s" not in line
    assert line.endswith("over 1 timed step(s)") and "ETA" not in line
    assert [format_rate(r) for r in (12345.6, 56.34, 9.87, 0.0042)] == ["12,346", "56.3", "9.9", "0.0042"]
    assert [format_eta(s) for s in (0.04, 4.24, 42.4, 215, 7500)] == ["0.0s", "4.2s", "42s", "3m35s", "2h05m"]
    assert eta_line("teacher", 2, 157.0, 30.0) == (
        "teacher: ETA 5m14s for the remaining 2 epoch(s) (2m37s each, 30s of it evaluation and checkpoint)")


class _SlowVal(Dataset):
    """Val images that take `delay` s each to load: evaluation the ETA must include."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.inner[i]


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", text)
    assert match, text
    h, m, s = match.groups()
    return 3600 * int(h or 0) + 60 * int(m or 0) + float(s or 0)


def test_few_steps_an_epoch_are_measured_first_and_the_eta_includes_evaluation(data):
    slow = dataclasses.replace(data, val=_SlowVal(data.val, 0.02))   # 32 images: 0.64 s of evaluation at least
    messages = []
    Trainer(CrossEntropy(), OptimizerConfig(), train_cfg=TrainConfig(device="cpu"), log=messages.append).fit(
        _net(4, 0), slow, 3, seed=0)
    rate = [m for m in messages if "img/s" in m]
    assert len(rate) == 1 and rate[0].endswith("over 2 timed step(s)") and " 0 img/s" not in rate[0]
    eta = [m for m in messages if "ETA" in m]
    assert len(eta) == 1
    # after epoch 1, not before: the epoch line comes first, then the ETA of the 2 epochs left
    assert messages.index(eta[0]) == 1 + next(i for i, m in enumerate(messages) if "epoch 1/3" in m)
    found = re.search(r"ETA (\S+) for the remaining 2 epoch\(s\) \((\S+) each, (\S+) of it evaluation", eta[0])
    assert found, eta[0]
    total, each, outside = (_seconds(g) for g in found.groups())
    assert outside >= 0.6 and each >= outside and total >= 2 * 0.6


def test_a_long_first_epoch_predicts_after_ten_timed_steps(data):
    small = dataclasses.replace(data, batch_size=2)   # 32 steps an epoch
    messages = []
    Trainer(CrossEntropy(), OptimizerConfig(), train_cfg=TrainConfig(device="cpu", log_every=5),
            log=messages.append).fit(_net(4, 0), small, 1, seed=0)
    rate = [m for m in messages if "img/s" in m]
    # steps 3..15 timed (the first multiple of log_every with 10 timed), the ETA of the steps left
    assert len(rate) == 1 and "ETA" in rate[0] and rate[0].endswith(
        "for the training steps of 1 epoch(s), evaluation timed after the first")
    assert messages.index(rate[0]) < next(i for i, m in enumerate(messages) if "epoch 1/1" in m)


# --------------------------------------------------------------------------- precision for the device

def test_bf16_falls_back_to_fp32_on_a_cpu_without_native_bf16():
    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu, {"avx2": True, "avx512_bf16": False, "amx_bf16": False})[0] == "fp32"
    for native in ({"avx512_bf16": True}, {"amx_bf16": True}, {"bf16": True}):
        assert resolve_precision("bf16", cpu, native) == ("bf16", None)
    assert resolve_precision("fp32", cpu, {}) == ("fp32", None)
    assert resolve_precision("bf16", torch.device("cuda", 0), {}) == ("bf16", None)  # a GPU is not asked here
    cfg, placement = for_stage(TrainConfig(device="cpu", precision="bf16"), capabilities={"avx2": True})
    assert cfg.precision == "fp32" and placement.record() == {
        "device": "cpu", "precision": "fp32", "world_size": 1, "requested_precision": "bf16"}
    line = placement.line()
    assert line.startswith("train: cpu, fp32, 1 process (bf16 asked for: this CPU has no native bf16") and \
        "\n" not in line


def test_bf16_falls_back_when_the_environment_holds_the_kernels_below_bf16():
    cpu, native = torch.device("cpu"), {"avx512_bf16": True}
    for environ in ({"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"},
                    {"DNNL_MAX_CPU_ISA": "avx512_core"}):
        precision, note = resolve_precision("bf16", cpu, native, environ)
        name = next(iter(environ))
        assert precision == "fp32" and "{}={}".format(name, environ[name]) in note, (environ, note)
    for environ in ({}, {"ATEN_CPU_CAPABILITY": "avx512"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
                    {"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, {"ONEDNN_MAX_CPU_ISA": "ALL"}):
        assert resolve_precision("bf16", cpu, native, environ) == ("bf16", None), environ
    assert resolve_precision("fp32", cpu, native, {"ATEN_CPU_CAPABILITY": "avx2"}) == ("fp32", None)


def test_cpuinfo_flags_are_read_when_torch_cannot_say(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    flags = placement_module._cpuinfo_flags(str(info))
    assert placement_module.cpu_has_native_bf16(flags)
    assert not placement_module.cpu_has_native_bf16(placement_module._cpuinfo_flags(str(tmp_path / "none")))
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(placement_module, "_cpuinfo_flags", lambda: {"avx2": True})
    assert placement_module.cpu_capabilities() == {"avx2": True}


def test_the_summary_records_the_precision_that_ran(monkeypatch):
    from edgekit.host.steps import _training

    monkeypatch.setattr(placement_module, "cpu_capabilities", lambda: {"avx2": True})
    recipe = load_recipe("digits", ["train.device=cpu", "train.precision=bf16"])
    record = _training(types.SimpleNamespace(recipe=recipe, world=World()))
    assert (record["precision"], record["requested_precision"], record["world_size"]) == ("fp32", "bf16", 1)


def test_each_training_stage_says_once_where_and_how_it_trains(tiny_run):
    lines = tiny_run[2]
    assert lines.count("train: cpu, fp32, 1 process") == 2   # teacher, compress
    teacher_at = lines.index("train: cpu, fp32, 1 process")
    assert lines[teacher_at + 1].startswith("teacher")
