"""Prune to a latency budget: Torch-Pruning's groups and importances, the table's knapsack, real timing.

The policy lives in `edgekit.device.latency.allocate` (torch-free); this module supplies what needs
torch: the DependencyGraph groups of a ResNet-50 (stem, each block's conv1/conv2, each stage's
residual-coupled output), their channel importances, the physical pruning to the chosen widths,
and end-to-end timing of real models exported to ONNX.
"""

import copy
import os
import tempfile
from typing import Callable, Dict, List, Sequence

import numpy as np
from torch import nn

from ...device.latency.allocate import allocate
from ...device.latency.backends import Backend, feeds_for
from ...device.latency.layers import BLOCKS, Groups, block_group, groups_of, stage_group
from ...device.latency.table import LatencyTable
from ..arch.resnet import stage_spec
from .prune import make_importance


def group_roots(model: nn.Module) -> Dict[str, nn.Conv2d]:
    """One conv whose output channels stand for each group (Torch-Pruning pulls in the rest)."""
    roots = {"stem": model.conv1}
    for s, (layer, n) in enumerate(zip((model.layer1, model.layer2, model.layer3, model.layer4), BLOCKS), start=1):
        roots[stage_group(s)] = layer[0].conv3
        for b in range(n):
            roots[block_group(s, b, 1)] = layer[b].conv1
            roots[block_group(s, b, 2)] = layer[b].conv2
    return roots


def _graph(model: nn.Module, image_size: int):  # noqa: ANN202
    import torch
    import torch_pruning as tp

    example = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def importances(model: nn.Module, method: str, image_size: int = 32) -> Dict[str, np.ndarray]:
    """Each group's channel scores from the registered importance (over every coupled layer)."""
    import torch_pruning as tp

    graph = _graph(model.eval(), image_size)
    imp = make_importance(method)
    scores = {}
    for name, conv in group_roots(model).items():
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        scores[name] = imp(group).detach().cpu().numpy().astype(float)
    return scores


def prune_to_groups(model: nn.Module, widths: Groups, scores: Dict[str, np.ndarray], image_size: int = 32) -> nn.Module:
    """A copy of `model` with each group cut to `widths[g]`, dropping its least important channels."""
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    graph = _graph(model, image_size)
    for name, conv in group_roots(model).items():
        remove = conv.out_channels - widths[name]
        if remove <= 0:
            continue
        idxs = [int(i) for i in np.argsort(scores[name], kind="stable")[:remove]]
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs)
        group.prune()
    stage_spec(model)  # proves the residual coupling survived
    return model


def prune_for_latency(model: nn.Module, table: LatencyTable, budget_ms: float, method: str, min_channels: int,
                      what: str = "latency budget") -> Dict[str, object]:
    current = groups_of(stage_spec(model))
    scores = importances(model, method)
    widths, predicted = allocate(table, current, scores, budget_ms, min_channels, what=what)
    return {"model": prune_to_groups(model, widths, scores), "groups": widths, "predicted_ms": predicted}


def _onnx_proto(model: nn.Module, image_size: int, batch: int):  # noqa: ANN202
    import onnx

    from ..export import export_onnx

    folder = tempfile.mkdtemp(prefix="edgekit-lat-")
    path = os.path.join(folder, "m.onnx")
    export_onnx(model, path, image_size)
    proto = onnx.load(path)
    os.remove(path)
    os.rmdir(folder)
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = batch  # a static batch, as the table's layers were timed
    return proto


def measure_ms(models: Sequence[nn.Module], backend: Backend, image_size: int, batch: int,
               rounds: int = 3) -> List[float]:
    """End-to-end ms of each model on `backend`, interleaved (A B A B ...) so a busy neighbour
    slows all of them alike; each model's figure is its best window."""
    return interleave([timer_for(m, backend, image_size, batch) for m in models], rounds)


def timer_for(model: nn.Module, backend: Backend, image_size: int, batch: int) -> Callable[[], float]:
    if backend.name == "torch-cuda":
        return backend.module_timer(model, image_size, batch)  # type: ignore[attr-defined]
    proto = _onnx_proto(model, image_size, batch)
    return backend.timer(proto, feeds_for(proto))


def interleave(timers: Sequence[Callable[[], float]], rounds: int = 3) -> List[float]:
    best = [float("inf")] * len(timers)
    for _ in range(rounds):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer())
    return best


class LatencyPlan(object):
    """The spiral's latency budget: the table, the dense model's measured latency, and per-round pruning
    that is checked by measurement (dense and pruned timed side by side) and re-allocated if it misses."""

    def __init__(self, teacher: nn.Module, recipe, log: Callable[[str], None] = print) -> None:  # noqa: ANN001
        from ...device.latency.backends import get_backend
        from ...device.latency.table import load_or_build

        pcfg = recipe.prune
        self.pcfg, self.teacher, self.log = pcfg, teacher, log
        self.size, self.batch = pcfg.latency_image_size, pcfg.latency_batch
        threads = recipe.bench.threads or recipe.threads
        self.backend = get_backend(pcfg.latency_backend, precision=pcfg.latency_precision, threads=threads)
        if pcfg.latency_table:
            self.table = LatencyTable.load(pcfg.latency_table)
        else:
            self.table, _ = load_or_build(self.backend, self.size, self.batch, log=log)
        self.dense_timer = timer_for(teacher, self.backend, self.size, self.batch)  # exported once, timed each try
        self.dense_ms = interleave([self.dense_timer])[0]
        ratio = pcfg.target_latency_ratio if pcfg.target_latency_ratio is not None \
            else pcfg.target_latency_ms / self.dense_ms
        self.target_ratio = min(1.0, ratio)
        self.dense_predicted = self.table.predict_ms(groups_of(stage_spec(teacher)))
        self.correction = 1.0  # measured/predicted ratio error, learnt from each round's measurement
        self.seen: List[float] = []
        log("latency target: {:.1%} of the dense model's {:.3f} ms = {:.3f} ms ({}, {}x{}, batch {}, {})".format(
            self.target_ratio, self.dense_ms, self.target_ratio * self.dense_ms, pcfg.latency_backend, self.size,
            self.size, self.batch, pcfg.latency_precision))

    def schedule(self, rounds: int) -> List[float]:
        return [self.target_ratio ** (k / float(rounds)) for k in range(1, rounds + 1)]

    def prune_round(self, student: nn.Module, ratio: float, tolerance: float = 0.05, tries: int = 6):  # noqa: ANN201
        """Prune `student` to `ratio` of the dense latency; return (model, record fields)."""
        what = "latency budget ({:.1%} of the dense {:.3f} ms)".format(ratio, self.dense_ms)
        trials = []
        best = None
        here: List[float] = []   # this round's measured/predicted ratios
        for _ in range(tries):
            # The table's error depends on the widths: once this round has measured its own candidates,
            # their ratios steer the budget (the whole run's history only starts it off).
            correction = float(np.clip(np.exp(np.mean(np.log(here[-2:]))), 0.75, 1.33)) if here else self.correction
            budget = ratio * self.dense_predicted / correction
            out = prune_for_latency(student, self.table, budget, self.pcfg.method, self.pcfg.min_channels, what=what)
            pair = [self.dense_timer, timer_for(out["model"], self.backend, self.size, self.batch)]
            dense_ms, ms = interleave(pair, rounds=5)
            if abs(ms / dense_ms / ratio - 1) > tolerance:
                # Confirm a miss before acting on it: a busy neighbour fakes misses. Each model keeps its
                # fastest window of both passes (others only ever add time).
                again = interleave(pair, rounds=5)
                dense_ms, ms = min(dense_ms, again[0]), min(ms, again[1])
            measured = ms / dense_ms
            predicted = out["predicted_ms"] / self.dense_predicted
            trials.append({"budget_ratio": round(budget / self.dense_predicted, 5),
                           "predicted_ratio": round(predicted, 5), "measured_ratio": round(measured, 5)})
            self.log("  latency: predicted {:.1%}, measured {:.1%} of dense ({:.3f} / {:.3f} ms), target {:.1%}".format(
                predicted, measured, ms, dense_ms, ratio))
            if best is None or abs(measured / ratio - 1) < abs(best[1]["latency_ratio"] / ratio - 1):
                best = (out, {"latency_ms": round(ms, 4), "dense_latency_ms": round(dense_ms, 4),
                              "latency_ratio": round(measured, 5), "predicted_latency_ratio": round(predicted, 5),
                              "target_latency_ratio": round(ratio, 5), "latency_backend": self.backend.name})
            # A noisy neighbour can swing one measurement by 20%: the correction is the geometric mean of
            # every measured/predicted ratio seen so far, bounded (the table's ratios were within a few
            # percent of the measured ones whenever the machine was quiet).
            self.seen.append(measured / predicted)
            here.append(measured / predicted)
            self.correction = float(np.clip(np.exp(np.mean(np.log(self.seen))), 0.75, 1.33))
            if abs(measured / ratio - 1) <= tolerance:
                break
        out, fields = best
        fields["latency_trials"] = trials
        return out["model"], fields
