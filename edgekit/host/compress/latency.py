"""Prune to a latency budget: Torch-Pruning's groups and importances, the table's knapsack, real timing.

The policy lives in `edgekit.device.latency.allocate` (torch-free); this module supplies what needs
torch: the channel importances of the groups the layer description names (each group is pruned
through its root module, and Torch-Pruning's DependencyGraph pulls in every coupled layer: a
ResNet-50's residual-tied stage outputs, a MobileNet's depthwise convolutions and squeeze-excite
scales), the physical pruning to the chosen widths, and end-to-end timing of real models exported
to ONNX.
"""

import copy
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from torch import nn

from ...device.latency.allocate import allocate, check_floor
from ...device.latency.backends import Backend, feeds_for
from ...device.latency.layers import resnet50_net
from ...device.latency.net import Groups, Net
from ...device.latency.table import LatencyTable, layers_hash
from ...errors import EdgekitError
from ..arch import architecture
from .prune import make_importance


def current_widths(model: nn.Module, net: Net) -> Groups:
    """Each prunable group's width in `model`: its root module's output channels."""
    found = {}
    for name, group in net.groups.items():
        if group["prunable"]:
            root = model.get_submodule(group["root"])
            found[name] = int(root.out_channels if isinstance(root, nn.Conv2d) else root.out_features)
    return found


def _root_group(graph: Any, model: nn.Module, net: Net, name: str, idxs: List[int]) -> Any:
    import torch_pruning as tp

    root = model.get_submodule(net.groups[name]["root"])
    handler = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
    return graph.get_pruning_group(root, handler, idxs=idxs)


def _graph(model: nn.Module, image_size: int):  # noqa: ANN202
    import torch
    import torch_pruning as tp

    example = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def importances(model: nn.Module, method: str, image_size: int = 32,
                net: Optional[Net] = None) -> Dict[str, np.ndarray]:
    """Each group's channel scores from the registered importance (over every coupled layer)."""
    net = net or resnet50_net(image_size)
    graph = _graph(model.eval(), image_size)
    imp = make_importance(method)
    scores = {}
    for name, width in current_widths(model, net).items():
        group = _root_group(graph, model, net, name, list(range(width)))
        scores[name] = imp(group).detach().cpu().numpy().astype(float)
    return scores


def prune_to_groups(model: nn.Module, widths: Groups, scores: Dict[str, np.ndarray], image_size: int = 32,
                    net: Optional[Net] = None) -> nn.Module:
    """A copy of `model` with each group cut to `widths[g]`, dropping its least important channels."""
    net = net or resnet50_net(image_size)
    model = copy.deepcopy(model).eval()
    graph = _graph(model, image_size)
    for name, width in current_widths(model, net).items():
        remove = width - widths[name]
        if remove <= 0:
            continue
        idxs = [int(i) for i in np.argsort(scores[name], kind="stable")[:remove]]
        _root_group(graph, model, net, name, idxs).prune()
    architecture(net.arch).check(model)  # e.g. ResNet-50's residual coupling survived
    return model


def prune_for_latency(model: nn.Module, table: LatencyTable, budget_ms: float, method: str, min_channels: int,
                      what: str = "latency budget", image_size: int = 32) -> Dict[str, object]:
    current = current_widths(model, table.net)
    scores = importances(model, method, image_size, table.net)
    widths, predicted = allocate(table, current, scores, budget_ms, min_channels, what=what)
    return {"model": prune_to_groups(model, widths, scores, image_size, table.net), "groups": widths,
            "predicted_ms": predicted}


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
        from ...device.runtime.registry import latency_backend

        pcfg = recipe.prune
        self.pcfg, self.teacher, self.log = pcfg, teacher, log
        self.size, self.batch = pcfg.latency_image_size, pcfg.latency_batch
        threads = recipe.bench.threads or recipe.threads
        self.backend = latency_backend(pcfg.latency_backend, precision=pcfg.latency_precision, threads=threads)
        self.table = _table_for(teacher, recipe, self.backend, log)
        self.dense_timer = timer_for(teacher, self.backend, self.size, self.batch)  # exported once, timed each try
        self.dense_ms = interleave([self.dense_timer])[0]
        ratio = pcfg.target_latency_ratio if pcfg.target_latency_ratio is not None \
            else pcfg.target_latency_ms / self.dense_ms
        self.target_ratio = min(1.0, ratio)
        dense = current_widths(teacher, self.table.net)
        self.dense_predicted = self.table.predict_ms(dense)
        self.correction = 1.0  # measured/predicted ratio error, learnt from each round's measurement
        self.seen: List[float] = []
        log("latency target: {:.1%} of the dense model's {:.3f} ms = {:.3f} ms ({}, {}x{}, batch {}, {})".format(
            self.target_ratio, self.dense_ms, self.target_ratio * self.dense_ms, pcfg.latency_backend, self.size,
            self.size, self.batch, pcfg.latency_precision))
        # The last round's budget, checked now: an unreachable target fails before any distillation.
        check_floor(self.table, dense, self.target_ratio * self.dense_predicted, pcfg.min_channels,
                    what="the final latency budget ({:.1%} of the dense model's predicted {:.3f} ms)".format(
                        self.target_ratio, self.dense_predicted))

    def schedule(self, rounds: int) -> List[float]:
        return [self.target_ratio ** (k / float(rounds)) for k in range(1, rounds + 1)]

    def _correction(self, here: List[float]) -> Any:
        """The measured/predicted ratio the next budget divides by, and where it comes from."""
        if here:  # the table's error depends on the widths: this round's own candidates steer it
            value = float(np.clip(np.exp(np.mean(np.log(here[-2:]))), 0.75, 1.33))
            return value, "this round's last {} measurement(s)".format(min(2, len(here)))
        if self.seen:
            return self.correction, "the {} earlier measurement(s)".format(len(self.seen))
        return self.correction, "the table alone"

    def prune_round(self, student: nn.Module, ratio: float, tolerance: float = 0.05, tries: int = 6):  # noqa: ANN201
        """Prune `student` to `ratio` of the dense latency; return (model, record fields)."""
        what = "latency budget ({:.1%} of the dense {:.3f} ms)".format(ratio, self.dense_ms)
        trials: List[Dict[str, float]] = []
        best = None
        here: List[float] = []   # this round's measured/predicted ratios
        for attempt in range(1, tries + 1):
            correction, why = self._correction(here)
            budget = ratio * self.dense_predicted / correction
            self.log("  latency attempt {}/{}: budget {:.1%} of the dense prediction ({:.1%} target / measured-to-"
                     "predicted {:.3f}, from {})".format(attempt, tries, budget / self.dense_predicted, ratio,
                                                         correction, why))
            out = prune_for_latency(student, self.table, budget, self.pcfg.method, self.pcfg.min_channels, what=what)
            dense_ms, ms = self._measure(out["model"], ratio, tolerance)
            measured = ms / dense_ms
            predicted = out["predicted_ms"] / self.dense_predicted
            trials.append({"budget_ratio": round(budget / self.dense_predicted, 5),
                           "predicted_ratio": round(predicted, 5), "measured_ratio": round(measured, 5)})
            hit = abs(measured / ratio - 1) <= tolerance
            self.log("  latency attempt {}/{}: predicted {:.1%}, measured {:.1%} of dense ({:.3f} / {:.3f} ms), "
                     "target {:.1%}: {}".format(attempt, tries, predicted, measured, ms, dense_ms, ratio,
                                                _verdict(measured / ratio - 1, hit, tolerance, attempt < tries)))
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
            if hit:
                break
        out, fields = best
        fields["latency_trials"] = trials
        return out["model"], fields

    def _measure(self, model: nn.Module, ratio: float, tolerance: float) -> Sequence[float]:
        """Dense and pruned ms, timed side by side. A miss is confirmed before it is acted on (a busy
        neighbour fakes misses): each model keeps its fastest window of both passes."""
        pair = [self.dense_timer, timer_for(model, self.backend, self.size, self.batch)]
        dense_ms, ms = interleave(pair, rounds=5)
        if abs(ms / dense_ms / ratio - 1) > tolerance:
            again = interleave(pair, rounds=5)
            dense_ms, ms = min(dense_ms, again[0]), min(ms, again[1])
        return dense_ms, ms


def _verdict(off: float, hit: bool, tolerance: float, more: bool) -> str:
    if hit:
        return "within {:.0%}".format(tolerance)
    return "{:+.1%} off, {}".format(off, "the next attempt re-budgets by the measured/predicted ratio" if more
                                    else "keeping the closest attempt")


def _table_for(teacher: nn.Module, recipe: Any, backend: Backend, log: Callable[[str], None]) -> LatencyTable:
    """prune.latency_table if given (it must describe this model's layers), else the cached or a new one."""
    from ...device.latency.table import load_or_build

    pcfg = recipe.prune
    net = architecture(recipe.model.arch).latency_layers(teacher, pcfg.latency_image_size)
    if not pcfg.latency_table:
        return load_or_build(backend, pcfg.latency_image_size, pcfg.latency_batch, log=log, net=net)[0]
    table = LatencyTable.load(pcfg.latency_table)
    if layers_hash(table.net) != layers_hash(net):
        raise EdgekitError("prune.latency_table {} was measured for other layers ({}, {} kinds at {}x{}) than "
                           "this run's {} ({} kinds at {}x{}); build it with edgekit latency-table and this run's "
                           "recipe".format(
                               pcfg.latency_table, table.net.arch, len(table.net.kinds), table.net.image_size,
                               table.net.image_size, net.arch, len(net.kinds), net.image_size, net.image_size))
    return table
