"""The spiral: prune a step, recover by distillation from the unpruned teacher, repeat.

Round k prunes the current student to `target ** (k / rounds)` of the teacher's MACs, or with
`prune.target: latency` of the teacher's measured latency (compress/latency.py) (a geometric
schedule: every round removes the same share of what is left), then distills it for
`epochs_per_round` epochs (the last round adds `final_epochs`). Each finished round is saved as a
model file plus a JSON record, and the distillation inside a round checkpoints every epoch, so an
interrupted spiral resumes at the epoch it stopped in.
"""

import copy
import functools
import json
import os
import time
from typing import Any, Callable, Dict, List, Tuple

from torch import nn

from ...artifacts import config_hash, remove_if_exists, write_json_atomic
from ...recipe import Recipe, TrainConfig
from ..arch import Architecture, architecture, count_macs_params, load_student, save_student
from ..data import DataBundle, evaluate_top1
from ..dist import Dist, resolve_device
from ..dist import current as current_dist
from ..train import AfterStep, for_stage
from .distill import distill
from .prune import UNSTRUCTURED_NOTE, conv_sparsity, keep_masks, prune, prune_unstructured, pruned_result


def macs_schedule(target_ratio: float, rounds: int) -> List[float]:
    return [target_ratio ** (k / float(rounds)) for k in range(1, rounds + 1)]


def _quiet(_message: str) -> None:
    pass


def _load_round(folder: str, k: int, key: str):  # noqa: ANN202
    record_path = os.path.join(folder, "round{}.json".format(k))
    model_path = os.path.join(folder, "round{}.pt".format(k))
    if not (os.path.exists(record_path) and os.path.exists(model_path)):
        return None
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    model, _ = load_student(model_path)
    return model, record


def _shared(d: Dist, arch: Architecture, make: Callable[[], Any]) -> Any:
    """Rank 0 runs `make` -> None or (model, extra); every rank gets the same (a rebuilt copy of the
    model from its width spec and state_dict). Under torchrun rank 0 alone prunes and reads files."""
    out = make() if d.is_writer else None
    if not d.distributed:
        return out
    payload = None
    if out is not None:
        payload = (arch.width_spec(out[0]), arch.num_classes(out[0]),
                   {k: v.detach().cpu() for k, v in out[0].state_dict().items()}, out[1])
    payload = d.broadcast_object(payload)
    if d.is_writer or payload is None:
        return out
    spec, classes, state, extra = payload
    model = arch.from_width_spec(spec, classes)
    model.load_state_dict(state)
    return model, extra


def _prune_and_score(student: nn.Module, target_macs: int, data: DataBundle, recipe: Recipe, device: Any,
                     log: Callable[[str], None], plan: Any = None, latency_ratio: float = 1.0) -> Any:
    pcfg, arch = recipe.prune, architecture(recipe.model.arch)
    if plan is not None:  # latency target: the table's allocation, checked by timing (edgekit.host.compress.latency)
        pruned, latency = plan.prune_round(student, latency_ratio)
        result = pruned_result(student, pruned, arch, data.image_size, latency)
    else:
        result = prune(student, target_macs, data.image_size, arch, method=pcfg.method,
                       allocation=pcfg.allocation, round_to=pcfg.round_to,
                       max_layer_ratio=pcfg.max_layer_ratio, log=log)
    facts = copy.copy(result)
    facts.model = None  # travels as width spec + state_dict
    return result.model, (facts, evaluate_top1(result.model, data.val_loader(), device))


def spiral(teacher: nn.Module, data: DataBundle, recipe: Recipe, folder: str, *, teacher_key: str,
           log: Callable[[str], None] = print) -> Tuple[nn.Module, List[Dict[str, Any]]]:
    """Run (or resume) the prune→distill spiral; return the final student and one record per round."""
    d = current_dist()
    device = d.device or resolve_device(recipe.train.device)
    if not d.is_writer:
        log = _quiet
    else:
        os.makedirs(folder, exist_ok=True)
    pcfg, dcfg = recipe.prune, recipe.distill
    arch = architecture(recipe.model.arch)
    train_cfg, placement = for_stage(recipe.train, d)
    log(placement.line())
    size = data.image_size
    teacher_macs, _ = count_macs_params(teacher, size)
    base = {"teacher": teacher_key, "prune": recipe.to_dict()["prune"], "distill": recipe.to_dict()["distill"],
            "seed": recipe.seed}
    if pcfg.method == "unstructured":
        return _unstructured(teacher, data, recipe, folder, base, log, train_cfg)

    student = copy.deepcopy(teacher)
    records: List[Dict[str, Any]] = []
    plan, target = None, pcfg.target_macs_ratio
    if pcfg.target == "latency":  # the same geometric schedule, of the dense model's measured latency
        if d.is_writer:
            from .latency import LatencyPlan

            plan = LatencyPlan(teacher, recipe, log)
            target = plan.target_ratio
        target = d.broadcast_object(target) if d.distributed else target
    schedule = macs_schedule(target, pcfg.rounds)
    previous = config_hash(base)
    for k, ratio in enumerate(schedule, start=1):
        key = config_hash({"previous": previous, "round": k, "ratio": ratio})
        previous = key
        done = _shared(d, arch, functools.partial(_load_round, folder, k, key))
        if done is not None:
            student, record = done
            records.append(record)
            log("round {}/{}: reused ({:.1%} of teacher MACs, val top-1 {:.2f}%)".format(
                k, len(schedule), record["macs_ratio"], record["top1"]))
            continue
        started = time.perf_counter()
        log("round {}/{}: prune to {:.1%} of the teacher's {}".format(
            k, len(schedule), ratio, "MACs" if plan is None else "measured latency"))
        student, (result, top1_pruned) = _shared(
            d, arch, functools.partial(_prune_and_score, student, int(ratio * teacher_macs), data, recipe, device, log,
                                 plan, ratio))
        log("round {}/{}: val top-1 right after pruning {:.2f}%".format(k, len(schedule), top1_pruned))
        epochs = dcfg.epochs_per_round + (dcfg.final_epochs if k == len(schedule) else 0)
        history = distill(student, teacher, data, epochs, dcfg.optimizer, dcfg.alpha, dcfg.temperature,
                          checkpoint=os.path.join(folder, "round{}.train.pt".format(k)),
                          key=config_hash({"round": key, "width_spec": result.width_spec}),
                          seed=recipe.seed + k, desc="round {} distill".format(k), log=log,
                          train_cfg=train_cfg)
        top1 = history[-1]["val_top1"] if history else evaluate_top1(student, data.val_loader(), device)
        record = _round_record(k, key, ratio, result, teacher_macs, (top1_pruned, top1), history,
                               time.perf_counter() - started)
        _save_round(d, folder, k, student, arch, record, {"round": k})
        records.append(record)
    return student, records


def _round_record(k: int, key: str, ratio: float, result: Any, teacher_macs: int, top1s: Tuple[float, float],
                  history: List[Dict[str, Any]], seconds: float) -> Dict[str, Any]:
    """What round k did: its target, the student's size, top-1 right after pruning and after distillation."""
    top1_pruned, top1 = top1s
    record = {"round": k, "key": key, "target_macs_ratio": round(ratio, 5),
              "macs": result.macs_after, "params": result.params_after,
              "macs_ratio": round(result.macs_after / float(teacher_macs), 5),
              "channel_sparsity": round(result.channel_sparsity, 5),
              "top1_after_prune": round(top1_pruned, 3), "top1": round(top1, 3),
              "epochs": len(history), "history": history, "width_spec": result.width_spec,
              "seconds": round(seconds, 2)}
    record.update(result.latency)  # latency target: measured latency_ms, latency_ratio beside the MACs
    return record


def _save_round(d: Dist, folder: str, k: int, student: nn.Module, arch: Architecture, record: Dict[str, Any],
                meta: Dict[str, Any]) -> None:
    """Round k's model and record; its training checkpoint is spent then."""
    if d.is_writer:
        save_student(os.path.join(folder, "round{}.pt".format(k)), student, arch, meta=meta)
        write_json_atomic(os.path.join(folder, "round{}.json".format(k)), record)
        remove_if_exists(os.path.join(folder, "round{}.train.pt".format(k)))


def _unstructured(teacher: nn.Module, data: DataBundle, recipe: Recipe, folder: str, base: Dict[str, Any],
                  log: Callable[[str], None], train_cfg: TrainConfig) -> Tuple[nn.Module, List[Dict[str, Any]]]:
    pcfg, dcfg = recipe.prune, recipe.distill
    key = config_hash(dict(base, round=1))
    d = current_dist()
    device = d.device or resolve_device(recipe.train.device)
    arch = architecture(recipe.model.arch)
    done = _shared(d, arch, functools.partial(_load_round, folder, 1, key))
    if done is not None:
        return done[0], [done[1]]
    log("unstructured pruning to {:.0%} sparsity. Note: {}".format(pcfg.sparsity, UNSTRUCTURED_NOTE))
    started = time.perf_counter()
    student = copy.deepcopy(teacher)
    # Deterministic, so a resume gets the same masks and every torchrun rank computes the same ones.
    masks = prune_unstructured(student, pcfg.sparsity)
    top1_pruned = evaluate_top1(student, data.val_loader(), device)
    epochs = dcfg.epochs_per_round + dcfg.final_epochs
    history = distill(student, teacher, data, epochs, dcfg.optimizer, dcfg.alpha, dcfg.temperature,
                      checkpoint=os.path.join(folder, "round1.train.pt"), key=key, seed=recipe.seed + 1,
                      desc="unstructured distill", callbacks=[AfterStep(keep_masks(masks))], log=log,
                      train_cfg=train_cfg)
    macs, params = count_macs_params(student, data.image_size)
    teacher_macs, _ = count_macs_params(teacher, data.image_size)
    record = {"round": 1, "key": key, "method": "unstructured", "sparsity": round(conv_sparsity(student), 5),
              "note": UNSTRUCTURED_NOTE, "macs": macs, "params": params,
              "macs_ratio": round(macs / float(teacher_macs), 5), "top1_after_prune": round(top1_pruned, 3),
              "top1": history[-1]["val_top1"], "epochs": epochs, "history": history,
              "seconds": round(time.perf_counter() - started, 2)}
    _save_round(d, folder, 1, student, arch, record, {"round": 1, "unstructured": True})
    return student, [record]

