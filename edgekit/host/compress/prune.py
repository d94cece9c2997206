"""Structured pruning of ResNet-50 to a MACs target, on Torch-Pruning's dependency graph.

Three parts that do not know each other (Torch-Pruning's split): the dependency graph groups the
layers that must lose the same channels (a bottleneck's conv3, the downsample branch and every
later conv3 of a stage are tied by the residual additions; each conv's BatchNorm and the next
conv's input follow), an importance scores the channels of a group (L1 or L2 filter norm, or the
BatchNorm scale), and the policy here picks how many to remove: the smallest channel sparsity
whose pruned model meets the MACs target, found by bisection on trial copies. The classifier is
never pruned; channel counts are rounded to a multiple (`round_to`) that the target's kernels like.

Unstructured magnitude pruning is offered for comparison only: it zeroes weights but keeps every
channel, so MACs, ONNX size and TensorRT latency stay those of the dense model.
"""

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch
from torch import nn

from ...errors import EdgekitError
from ..models import count_macs_params, width_spec_of

METHODS = ("l1", "l2", "bn_scale")


def make_importance(method: str):  # noqa: ANN201
    import torch_pruning as tp

    if method == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if method == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if method == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise EdgekitError("unknown structured pruning method {!r}; choose one of {}".format(method, ", ".join(METHODS)))


def _pruner(model: nn.Module, image_size: int, method: str, ratio: float, allocation: str,
            round_to: int, max_layer_ratio: float):  # noqa: ANN202
    import torch_pruning as tp

    example = torch.zeros(1, 3, image_size, image_size)
    return tp.pruner.MetaPruner(
        model, example, importance=make_importance(method), pruning_ratio=ratio,
        global_pruning=(allocation == "global"), max_pruning_ratio=max_layer_ratio,
        round_to=round_to if round_to > 1 else None,
        ignored_layers=[model.fc])  # the classifier's outputs are the classes: never pruned


@dataclass
class PruneResult:
    model: nn.Module
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channel_sparsity: float
    width_spec: Dict = field(default_factory=dict)
    trials: List[Dict[str, float]] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / float(self.macs_before)


def prune(model: nn.Module, target_macs: int, image_size: int, method: str = "l1",
          allocation: str = "global", round_to: int = 8, max_layer_ratio: float = 0.9,
          tolerance: float = 0.02, max_trials: int = 10,
          log: Callable[[str], None] = print) -> PruneResult:
    """Remove whole channels until the model's MACs are at most `target_macs`.

    Returns a new, physically smaller model (the input is left untouched): the sparsity is
    bisected on copies and the first trial within `tolerance` below the target is kept.
    """
    if method not in METHODS:
        raise EdgekitError("prune: method {!r} is not structured; choose one of {}".format(method, ", ".join(METHODS)))
    model = model.eval()
    macs_before, params_before = count_macs_params(model, image_size)
    if macs_before <= target_macs:
        return PruneResult(copy.deepcopy(model), macs_before, macs_before, params_before, params_before,
                           0.0, width_spec_of(model))

    def trial(ratio: float):  # noqa: ANN202
        candidate = copy.deepcopy(model)
        _pruner(candidate, image_size, method, ratio, allocation, round_to, max_layer_ratio).step()
        macs, params = count_macs_params(candidate, image_size)
        return candidate, macs, params

    trials = []
    lo, hi = 0.0, max_layer_ratio
    best = None
    candidate, macs, params = trial(hi)
    trials.append({"channel_sparsity": hi, "macs": macs})
    if macs > target_macs:
        raise EdgekitError(
            "prune: cannot reach {:.1f}% of the MACs with at most {:.0%} of any layer removed "
            "(reached {:.1f}%); raise prune.max_layer_ratio or the target".format(
                100.0 * target_macs / macs_before, max_layer_ratio, 100.0 * macs / macs_before))
    best = (hi, candidate, macs, params)
    for _ in range(max_trials):
        mid = (lo + hi) / 2.0
        candidate, macs, params = trial(mid)
        trials.append({"channel_sparsity": round(mid, 5), "macs": macs})
        if macs <= target_macs:
            best = (mid, candidate, macs, params)
            hi = mid
            if macs >= target_macs * (1.0 - tolerance):
                break
        else:
            lo = mid
    ratio, pruned, macs, params = best
    spec = width_spec_of(pruned)  # also proves the residual coupling survived
    log("pruned ({}, {}, round to {}): channel sparsity {:.3f}, MACs {:.2f} M -> {:.2f} M ({:.1%}), "
        "params {:.2f} M -> {:.2f} M".format(method, allocation, round_to, ratio, macs_before / 1e6, macs / 1e6,
                                           macs / float(macs_before), params_before / 1e6, params / 1e6))
    return PruneResult(pruned, macs_before, macs, params_before, params, ratio, spec, trials)


# --------------------------------------------------------------------------- unstructured

UNSTRUCTURED_NOTE = ("unstructured sparsity keeps every channel: MACs, ONNX size and TensorRT latency "
                     "stay those of the dense model (TensorRT gains no speed from scattered zeros); "
                     "use a structured method (l1, l2, bn_scale) to make the model faster")


def prune_unstructured(model: nn.Module, sparsity: float) -> Dict[str, torch.Tensor]:
    """Zero the `sparsity` share of all conv weights with the smallest magnitude (global), in place.

    Returns the masks (1 = kept) keyed by parameter name, for `keep_masks` during recovery.
    """
    if not 0.0 <= sparsity < 1.0:
        raise EdgekitError("prune: sparsity must be in [0, 1), got {}".format(sparsity))
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for _, m in convs])
    k = int(sparsity * magnitudes.numel())
    masks = {}
    if k == 0:
        return {name + ".weight": torch.ones_like(m.weight) for name, m in convs}
    threshold = torch.kthvalue(magnitudes, k).values
    with torch.no_grad():
        for name, m in convs:
            mask = (m.weight.abs() > threshold).to(m.weight.dtype)
            m.weight.mul_(mask)
            masks[name + ".weight"] = mask
    return masks


def keep_masks(masks: Dict[str, torch.Tensor]) -> Callable[[nn.Module], None]:
    """A post-step hook that re-applies the masks so recovery training cannot regrow zeros."""
    def apply(model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].mul_(mask)
    return apply


def conv_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero conv weights."""
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return zeros / float(max(total, 1))

