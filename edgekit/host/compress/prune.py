"""Structured pruning to a MACs target, on Torch-Pruning's dependency graph.

Three parts that do not know each other (Torch-Pruning's split): the dependency graph groups the
layers that must lose the same channels (traced on the model itself: in a ResNet-50 a bottleneck's
conv3, the downsample branch and every later conv3 of a stage are tied by the residual additions; in
a MobileNet each depthwise convolution follows the expansion that feeds it; each conv's BatchNorm and
the next conv's input follow), an importance scores the channels of a group (L1 or L2 filter norm,
or the BatchNorm scale), and the policy here picks how many to remove: the smallest channel sparsity
whose pruned model meets the MACs target, found by bisection on trial copies. What the architecture
names in `ignored_layers` (the classifier) is never pruned; channel counts are rounded to a multiple
(`round_to`) that the target's kernels like. Importances are a registry keyed by name (`IMPORTANCES`,
`register_importance`). A latency budget instead of a MACs one is `compress/latency.py` (the table's
knapsack on the same groups).

Unstructured magnitude pruning is offered for comparison only: it zeroes weights but keeps every
channel, so MACs, ONNX size and TensorRT latency stay those of the dense model.
"""

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch
from torch import nn

from ...errors import EdgekitError
from ..arch import Architecture, count_macs_params

# Importance methods, keyed by name (Torch-Pruning's importance classes). Adding one is one entry here
# and its name in recipe.PruneConfig.method's choices.
IMPORTANCES: Dict[str, Callable[[], object]] = {}


def register_importance(name: str) -> Callable[[Callable[[], object]], Callable[[], object]]:
    def add(factory: Callable[[], object]) -> Callable[[], object]:
        IMPORTANCES[name] = factory
        return factory
    return add


@register_importance("l1")
def _l1():  # noqa: ANN202
    import torch_pruning as tp
    return tp.importance.MagnitudeImportance(p=1)


@register_importance("l2")
def _l2():  # noqa: ANN202
    import torch_pruning as tp
    return tp.importance.MagnitudeImportance(p=2)


@register_importance("bn_scale")
def _bn_scale():  # noqa: ANN202
    import torch_pruning as tp
    return tp.importance.BNScaleImportance()


@register_importance("lamp")
def _lamp():  # noqa: ANN202
    import torch_pruning as tp
    return tp.importance.LAMPImportance(p=2)


@register_importance("fpgm")
def _fpgm():  # noqa: ANN202
    import torch_pruning as tp
    return tp.importance.FPGMImportance(p=2)


METHODS = tuple(IMPORTANCES)


def make_importance(method: str):  # noqa: ANN201
    if method not in IMPORTANCES:
        raise EdgekitError("unknown structured pruning method {!r}; choose one of {}".format(
            method, ", ".join(IMPORTANCES)))
    return IMPORTANCES[method]()


def _pruner(model: nn.Module, arch: Architecture, image_size: int, method: str, ratio: float, allocation: str,
            round_to: int, max_layer_ratio: float):  # noqa: ANN202
    import torch_pruning as tp

    example = torch.zeros(1, 3, image_size, image_size)
    return tp.pruner.MetaPruner(
        model, example, importance=make_importance(method), pruning_ratio=ratio,
        global_pruning=(allocation == "global"), max_pruning_ratio=max_layer_ratio,
        round_to=round_to if round_to > 1 else None,
        ignored_layers=arch.ignored_layers(model))


def _pruned(model: nn.Module, arch: Architecture, image_size: int, method: str, ratio: float, allocation: str,
            round_to: int, max_layer_ratio: float) -> nn.Module:
    candidate = copy.deepcopy(model)
    _pruner(candidate, arch, image_size, method, ratio, allocation, round_to, max_layer_ratio).step()
    return candidate


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
    latency: Dict = field(default_factory=dict)  # latency target: measured and predicted latency of the result

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / float(self.macs_before)


def pruned_result(before: nn.Module, after: nn.Module, arch: Architecture, image_size: int,
                  latency: Dict) -> PruneResult:
    """A PruneResult for a model pruned by another policy (the latency allocation)."""
    macs_before, params_before = count_macs_params(before, image_size)
    macs, params = count_macs_params(after, image_size)
    channels = sum(m.out_channels for m in before.modules() if isinstance(m, nn.Conv2d))
    kept = sum(m.out_channels for m in after.modules() if isinstance(m, nn.Conv2d))
    return PruneResult(after, macs_before, macs, params_before, params, 1.0 - kept / float(channels),
                       arch.width_spec(after), latency=latency)


def prune(model: nn.Module, target_macs: int, image_size: int, arch: Architecture, method: str = "l1",
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
                           0.0, arch.width_spec(model))

    def trial(ratio: float):  # noqa: ANN202
        candidate = copy.deepcopy(model)
        _pruner(candidate, arch, image_size, method, ratio, allocation, round_to, max_layer_ratio).step()
        macs, params = count_macs_params(candidate, image_size)
        return candidate, macs, params

    trials = []
    lo, hi = 0.0, max_layer_ratio
    best = None
    candidate, macs, params = trial(hi)
    trials.append({"channel_sparsity": hi, "macs": macs})
    if macs > target_macs:
        # Rounding keeps whole multiples: with round_to 32/64 small layers cannot shrink, whatever the
        # ratio. Re-trying without rounding tells which limit bites.
        if round_to > 1 and count_macs_params(_pruned(model, arch, image_size, method, hi, allocation, 1,
                                                      max_layer_ratio), image_size)[0] <= target_macs:
            raise EdgekitError(
                "prune: cannot reach {:.1f}% of the MACs with channel counts rounded to multiples of {} "
                "(reached {:.1f}%: small layers cannot go below one multiple); lower prune.round_to or raise "
                "the target".format(100.0 * target_macs / macs_before, round_to, 100.0 * macs / macs_before))
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
    spec = arch.width_spec(pruned)  # with the family's own check (ResNet-50: the residual coupling)
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

