"""The ONNX-vs-PyTorch export check can fail, with the numbers; model.arch goes through a registry."""

import pytest
import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.host.arch import architecture
from edgekit.host.export import check_onnx_matches, export_onnx
from edgekit.recipe import load_recipe


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


def test_a_faithful_export_passes_and_a_wrong_one_fails_with_the_numbers(tmp_path):
    model = _tiny_model()
    path = str(tmp_path / "m.onnx")
    export_onnx(model, path, 16)
    images = torch.randn(8, 3, 16, 16)
    ok = check_onnx_matches(path, model, images)
    assert ok["max_abs_diff"] < 1e-4 and ok["top1_agreement"] == 100.0 and ok["samples"] == 8
    with torch.no_grad():
        model[5].bias += 0.5  # PyTorch moves on, the ONNX file keeps the old weights
    with pytest.raises(EdgekitError, match=r"m\.onnx disagrees with PyTorch on 8 images: max \|logit difference\| "
                                           r"0\.5 \(allowed [0-9.e-]+\), top-1 agreement [0-9.]+%"):
        check_onnx_matches(path, model, images)


def test_tolerance_scales_with_the_logits():
    model = _tiny_model()
    images = torch.randn(4, 3, 16, 16)
    # a difference well inside rtol of large logits passes; the same absolute difference fails at atol only
    with torch.no_grad():
        model[5].weight *= 1000.0
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = folder + "/big.onnx"
        export_onnx(model, path, 16)
        assert check_onnx_matches(path, model, images)["allowed_abs_diff"] > 1e-2
        with pytest.raises(EdgekitError, match="disagrees with PyTorch"):
            check_onnx_matches(path, model, images, atol=0.0, rtol=0.0)


def test_model_arch_is_read_from_a_registry():
    assert architecture("resnet50") is architecture("resnet50") and architecture("resnet50").title == "ResNet-50"
    with pytest.raises(EdgekitError, match=r"^unknown model.arch 'vgg11'; registered architectures: .*resnet50"):
        architecture("vgg11")


def test_an_unknown_arch_fails_before_any_work(tmp_path):
    from edgekit.host.pipeline import run

    recipe = load_recipe("digits", ["model.arch=vgg11"])
    with pytest.raises(EdgekitError, match="registered architectures: .*resnet50"):
        run(recipe, str(tmp_path / "out"), log=lambda line: None)
    assert not (tmp_path / "out").exists()
