import copy

import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.host.arch import count_macs_params
from edgekit.host.arch.resnet import RESNET50, stage_spec
from edgekit.host.compress.prune import conv_sparsity, keep_masks, prune, prune_unstructured
from edgekit.host.models import resnet50

SIZE = 32


@pytest.fixture(scope="module")
def trained_like():
    """A ResNet-50 whose filters have different norms, as a trained one's do."""
    torch.manual_seed(0)
    model = resnet50(num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(torch.rand(m.out_channels, 1, 1, 1) * 2)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def half(trained_like):
    teacher_macs, _ = count_macs_params(trained_like, SIZE)
    return prune(trained_like, teacher_macs // 2, SIZE, RESNET50, method="l1", log=lambda m: None), teacher_macs


def _check_coupling(model):
    """Every block's input width equals the previous block's output width; downsample matches."""
    width = model.conv1.out_channels
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            assert block.conv1.in_channels == width
            out = block.conv3.out_channels
            if block.downsample is None:
                assert out == width
            else:
                assert block.downsample[0].in_channels == width and block.downsample[0].out_channels == out
                assert block.downsample[1].num_features == out
            width = out
    assert model.fc.in_features == width


def test_pruning_removes_channels_for_real_and_the_model_still_runs(trained_like, half):
    result, teacher_macs = half
    student = result.model
    assert result.macs_after <= teacher_macs // 2
    assert result.macs_after >= 0.45 * teacher_macs  # bisection lands close to the target
    assert count_macs_params(student, SIZE) == (result.macs_after, result.params_after)
    dense_params = sum(p.numel() for p in trained_like.parameters())
    assert sum(p.numel() for p in student.parameters()) == result.params_after < 0.75 * dense_params
    dense_state, state = trained_like.state_dict(), student.state_dict()
    shrunk = [k for k in state if state[k].shape != dense_state[k].shape]
    assert "layer2.0.conv1.weight" in shrunk or "layer3.0.conv1.weight" in shrunk
    assert len(shrunk) > 50
    with torch.no_grad():
        out = student(torch.randn(4, 3, SIZE, SIZE))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    # the input model is left as it was
    assert stage_spec(trained_like)["stages"][3]["out"] == 2048


def test_residual_groups_stay_consistent(half):
    result, _ = half
    _check_coupling(result.model)
    spec = stage_spec(result.model)
    assert result.width_spec == RESNET50.width_spec(result.model)
    # a stage's blocks share one output width, and pruning did change some of them
    assert any(stage["out"] < dense for stage, dense in zip(spec["stages"], (256, 512, 1024, 2048)))


def test_classifier_is_never_pruned_and_widths_round_to_eight(half):
    result, _ = half
    assert result.model.fc.out_features == 10
    spec = stage_spec(result.model)
    widths = [spec["stem"]] + [s["out"] for s in spec["stages"]]
    widths += [w for s in spec["stages"] for block in s["blocks"] for w in block]
    assert all(w % 8 == 0 and w >= 8 for w in widths), widths


@pytest.mark.parametrize("method", ["l2", "bn_scale"])
def test_other_importances_reach_the_target(trained_like, method):
    teacher_macs, _ = count_macs_params(trained_like, SIZE)
    result = prune(trained_like, int(0.7 * teacher_macs), SIZE, RESNET50, method=method, log=lambda m: None)
    assert result.macs_after <= 0.7 * teacher_macs
    _check_coupling(result.model)


def test_uniform_allocation_prunes_every_layer_alike(trained_like):
    teacher_macs, _ = count_macs_params(trained_like, SIZE)
    result = prune(trained_like, int(0.6 * teacher_macs), SIZE, RESNET50, allocation="uniform", round_to=1,
                   log=lambda m: None)
    assert result.macs_after <= 0.6 * teacher_macs
    spec, dense = stage_spec(result.model), stage_spec(trained_like)
    kept = [a / float(b) for s, d in zip(spec["stages"], dense["stages"])
            for blk, dblk in zip(s["blocks"], d["blocks"]) for a, b in zip(blk, dblk)]
    assert max(kept) - min(kept) < 0.05, kept


def test_unreachable_target_is_a_clear_error(trained_like):
    teacher_macs, _ = count_macs_params(trained_like, SIZE)
    with pytest.raises(EdgekitError, match=r"cannot reach 1\.0% of the MACs with at most 30% of any layer"):
        prune(trained_like, int(0.01 * teacher_macs), SIZE, RESNET50, max_layer_ratio=0.3, log=lambda m: None)
    with pytest.raises(EdgekitError, match="not structured"):
        prune(trained_like, teacher_macs, SIZE, RESNET50, method="unstructured")


def test_unstructured_reports_sparsity_keeps_shapes_and_masks_survive_training(trained_like):
    model = copy.deepcopy(trained_like).train()
    macs_before = count_macs_params(model, SIZE)[0]
    masks = prune_unstructured(model, 0.6)
    assert conv_sparsity(model) == pytest.approx(0.6, abs=0.01)
    assert count_macs_params(model, SIZE)[0] == macs_before  # no speed: every channel is still there
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(2, 3, SIZE, SIZE)).sum()
    loss.backward()
    opt.step()
    keep_masks(masks)(model)
    assert conv_sparsity(model) == pytest.approx(0.6, abs=0.01)


def test_the_recipe_accepts_exactly_the_registered_importances():
    """prune.method is read from the registry, where methods live, by the run's check before any stage."""
    from edgekit.host.compress.prune import IMPORTANCES
    from edgekit.host.pipeline import check_choices
    from edgekit.recipe import recipe_from_dict

    for method in list(IMPORTANCES) + ["unstructured"]:
        check_choices(recipe_from_dict({"prune": {"method": method}}))
    with pytest.raises(EdgekitError, match=r"prune\.method must be one of l1, l2, bn_scale, lamp, fpgm, unstructured, "
                                           r"got 'l3'"):
        check_choices(recipe_from_dict({"prune": {"method": "l3"}}))
