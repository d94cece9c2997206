"""Architecture plugins: each family builds, prunes to a MACs target, reloads through its width spec and
loads torchvision's checkpoints; an architecture from a file outside edgekit runs the whole pipeline."""

import json
import os
import textwrap

import pytest
import torch
import torchvision
from conftest import TINY

from edgekit.errors import EdgekitError
from edgekit.host import arch as registry
from edgekit.host.arch import architecture, check_recipe, count_macs_params, load_student, save_student
from edgekit.host.compress.prune import prune
from edgekit.recipe import load_recipe
from edgekit.widthspec import is_depthwise, modules_of

NEW = ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]


def _trained_like(model):
    """Filters of different norms and BatchNorms with real statistics, as a trained model has."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(torch.rand(m.out_channels, 1, 1, 1) * 2)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", NEW)
def test_each_family_prunes_to_half_its_macs_and_reloads_through_its_width_spec(name, tmp_path):
    arch = architecture(name)
    torch.manual_seed(0)
    model = _trained_like(arch.build(10))
    macs, params = count_macs_params(model, 32)
    # one trial at half of every layer: the bisection around it is the same code for every family
    result = prune(model, macs // 2, 32, arch, max_layer_ratio=0.5, max_trials=0, log=lambda _m: None)
    assert result.macs_after <= macs // 2 and result.params_after < params
    dense, pruned = (modules_of(arch.width_spec(m), "conv") for m in (model, result.model))
    assert sum(c["out"] for c in pruned.values()) < sum(c["out"] for c in dense.values())
    assert all(is_depthwise(pruned[n]) for n, c in dense.items() if is_depthwise(c))  # depthwise stays so
    assert arch.num_classes(result.model) == 10  # the classifier keeps its classes
    path = str(tmp_path / "student.pt")
    save_student(path, result.model, arch)
    assert torch.load(path, weights_only=True)["width_spec"] == result.width_spec
    loaded, info = load_student(path)
    assert info["arch"] == name and info["width_spec"] == result.width_spec
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(result.model(images), loaded.eval()(images))


@pytest.mark.parametrize("name", NEW)  # ResNet-50's: test_models.py
def test_a_torchvision_checkpoint_loads_and_its_head_is_replaced(name, tmp_path):
    arch = architecture(name)
    torch.manual_seed(0)
    state = getattr(torchvision.models, name)(weights=None).state_dict()  # torchvision's own layout, 1000 classes
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 90, "state_dict": {"module." + k: v for k, v in state.items()}}, path)  # as DDP saves
    messages = []
    model, info = arch.load_checkpoint(str(path), num_classes=3, log=messages.append)
    assert info["head_replaced"] and arch.num_classes(model) == 3 and "1000-class head" in messages[0]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith(arch.head + "."))
    same, info = arch.load_checkpoint(str(path), log=messages.append)
    assert not info["head_replaced"] and torch.equal(same.state_dict()[arch.head + ".weight"],
                                                     state[arch.head + ".weight"])


def test_a_checkpoint_of_another_family_names_the_arch_to_set(tmp_path):
    path = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), path)
    with pytest.raises(EdgekitError, match=r"is a torchvision MobileNetV2, not a ResNet-50: set model.arch: "
                                           r"mobilenet_v2$"):
        architecture("resnet50").load_checkpoint(str(path))
    student = tmp_path / "student.pt"
    save_student(str(student), torchvision.models.mobilenet_v2(weights=None, num_classes=4),
                 architecture("mobilenet_v2"))
    with pytest.raises(EdgekitError, match=r"holds a mobilenet_v2 model, but model.arch is efficientnet_b0"):
        architecture("efficientnet_b0").load_checkpoint(str(student))


def test_a_spec_whose_widths_do_not_chain_is_refused():
    arch = architecture("mobilenet_v2")
    spec = arch.width_spec(arch.build(10))
    spec["modules"]["features.1.conv.1"]["out"] = 8  # the projection no longer feeds its BatchNorm's 16
    with pytest.raises(EdgekitError, match=r"channel counts do not chain in MobileNetV2"):
        arch.from_width_spec(spec, 10)
    spec["modules"]["features.1.conv.1"]["kernel"] = [3, 3]
    with pytest.raises(EdgekitError, match=r"features.1.conv.1 has kernel \[1, 1\] in MobileNetV2, the spec "
                                           r"records \[3, 3\]"):
        arch.from_width_spec(spec, 10)


@pytest.mark.parametrize("name, size, message", [
    ("mobilenet_v3_large", -3, r"data.image_size must be at least 32 for MobileNetV3-Large \(it downsamples 32x\), "
                               r"got -3"),
    ("resnet50", 8, r"data.image_size must be at least 16 for ResNet-50 \(it downsamples 32x\), got 8"),
])
def test_the_image_size_floor_is_the_architectures_own(name, size, message):
    with pytest.raises(EdgekitError, match="^recipe: " + message + "$"):
        check_recipe(load_recipe("digits", ["model.arch=" + name, "data.image_size={}".format(size)]))


def test_latency_pruning_of_a_family_without_a_latency_description_fails_before_any_work(tmp_path, monkeypatch):
    from edgekit.host.arch import _LOADED, register
    from edgekit.host.arch.efficientnet import EfficientNetB0
    from edgekit.host.pipeline import run

    class Undescribed(EfficientNetB0):
        name, title, latency_target = "efficientnet_b0_undescribed", "EfficientNet-B0 (undescribed)", False

    monkeypatch.setattr("edgekit.host.arch._LOADED", dict(_LOADED))  # registered for this test only
    register(Undescribed())
    recipe = load_recipe("digits", ["model.arch=efficientnet_b0_undescribed", "prune.target=latency",
                                    "prune.target_latency_ratio=0.6"])
    with pytest.raises(EdgekitError, match=r"^recipe: prune.target latency needs a latency table .* EfficientNet-B0 "
                                           r"\(undescribed\) does not describe them \(latency_target = False\); "
                                           r"use prune.target: macs$"):
        run(recipe, str(tmp_path / "out"), log=lambda _line: None)
    assert not (tmp_path / "out").exists()


class _SkipFirst(torch.nn.Module):
    """MobileNetV2's residual form, `x + self.conv(x)`: the skip connection is the Add's first input."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1))
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.conv(x)
        return self.head(x.mean((2, 3)))


def test_the_tensorrt_int8_model_quantizes_the_skip_input_whichever_side_it_is(tmp_path):
    import numpy as np
    import onnx

    from edgekit.host.compress.quantize import quantize
    from edgekit.host.export import export_onnx
    from edgekit.trtlint import lint

    torch.manual_seed(0)
    fp32 = str(tmp_path / "model.fp32.onnx")
    export_onnx(_SkipFirst().eval(), fp32, 16)
    calibration = [np.random.RandomState(0).rand(4, 3, 16, 16).astype(np.float32)]
    # the skip is already read through the DequantizeLinear of the branch's first convolution: nothing to add,
    # and above all no Q/DQ between the branch's last convolution and the Add it fuses with
    assert quantize(fp32, str(tmp_path), calibration)["residual_qdq_added"] == 0
    graph = onnx.load(str(tmp_path / "model.int8.qdq.onnx")).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    (add,) = [n for n in graph.node if n.op_type == "Add"]
    assert [producer[name] for name in add.input] == ["DequantizeLinear", "Conv"]  # the Conv's output fuses
    assert lint(str(tmp_path / "model.int8.qdq.onnx")) == []


# ---- an architecture from outside the package, found through its entry point

PLUGIN = '''
"""TinyNet: a residual CNN that lives outside edgekit, added by this one file and an entry point."""
import torch
from torch import nn

from edgekit.host.arch import Architecture


def _conv(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.stem = _conv(3, 64, 2)
        self.body = nn.Sequential(_conv(64, 64, 1), nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        self.down = _conv(64, 128, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.fc(torch.flatten(self.pool(self.down(x)), 1))


class TinyNetArchitecture(Architecture):
    name = "tinynet"
    title = "TinyNet"
    head = "fc"
    downsampling = 4
    min_image_size = 8

    def build(self, num_classes):
        return TinyNet(num_classes)


ARCHITECTURE = TinyNetArchitecture()
'''

PRESET = """
name: digits-tinynet
data: {dataset: digits, image_size: 16, batch_size: 32}
model: {arch: tinynet}
teacher: {train: true, epochs: 2, optimizer: {name: adamw, lr: 0.003, weight_decay: 0.05}}
prune: {target_macs_ratio: 0.5, rounds: 1}
distill: {epochs_per_round: 1, final_epochs: 0, optimizer: {name: adamw, lr: 0.002, weight_decay: 0.05}}
"""


def _install_plugin(folder, entries):
    info = folder / "tinynet_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinynet-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgekit.architectures]\n" + "".join(
        "{} = {}\n".format(name, target) for name, target in entries.items()))


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "tinynet_plugin.py").write_text(textwrap.dedent(PLUGIN))
    _install_plugin(folder, {"tinynet": "tinynet_plugin:ARCHITECTURE", "broken": "no_such_module:ARCHITECTURE"})
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    registry._LOADED.pop("tinynet", None)


@pytest.mark.slow
def test_an_architecture_from_outside_the_package_runs_the_pipeline(plugin_folder, tmp_path, monkeypatch):
    from edgekit.cli import main

    (tmp_path / "benchmarks" / "recipes").mkdir(parents=True)
    (tmp_path / "benchmarks" / "recipes" / "digits-tinynet.yaml").write_text(PRESET)
    monkeypatch.chdir(tmp_path)  # the user's own presets: ./benchmarks/recipes/
    assert "tinynet" in registry.names()
    sizes = [s for s in TINY if not s.startswith(("data.image_size", "teacher.epochs", "prune.rounds"))]
    args = ["run", "--recipe", "digits-tinynet", "--out", str(tmp_path / "out")]
    sizes += ["data.max_train_samples=128", "compare.enabled=false"]  # compare: test_pipeline.py's tiny run
    assert main(args + [a for s in sizes for a in ("--set", s)]) == 0
    with open(tmp_path / "out" / "summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["student"]["macs_ratio"] <= 0.5 and summary["teacher"]["top1"] > 10.0
    assert [m["name"] for m in summary["models"]] == ["fp32", "fp16", "int8.qdq", "int8.cpu"]
    student, info = load_student(str(tmp_path / "out" / "student.pt"))
    assert info["arch"] == "tinynet" and type(student).__name__ == "TinyNet"
    assert summary["student"]["width_spec"]["arch"] == "tinynet"
    assert os.path.exists(tmp_path / "out" / "eval.npz")
    with pytest.raises(EdgekitError, match=r"data.image_size must be at least 8 for TinyNet \(it downsamples 4x\)"):
        check_recipe(load_recipe("digits-tinynet", ["data.image_size=4"]))


def test_a_plugin_that_fails_to_load_or_shadows_a_builtin_is_one_line(plugin_folder, monkeypatch):
    with pytest.raises(EdgekitError, match=r"^architecture 'broken' \(no_such_module:ARCHITECTURE\) failed to load: "
                                           r"ModuleNotFoundError: No module named 'no_such_module'$"):
        architecture("broken")
    with pytest.raises(EdgekitError, match=r"^unknown model.arch 'vgg11'; registered architectures: broken, "
                                           r"efficientnet_b0, mobilenet_v2, mobilenet_v3_large, resnet50, tinynet "):
        architecture("vgg11")
    shadow = plugin_folder / "shadow"
    shadow.mkdir()
    _install_plugin(shadow, {"resnet50": "tinynet_plugin:ARCHITECTURE"})
    monkeypatch.syspath_prepend(str(shadow))
    monkeypatch.delitem(registry._LOADED, "resnet50", raising=False)  # resolved afresh, as in a new process
    with pytest.raises(EdgekitError, match=r"^model.arch 'resnet50' is built in, and entry point "
                                           r"tinynet_plugin:ARCHITECTURE \(group edgekit.architectures\) declares"):
        architecture("resnet50")
