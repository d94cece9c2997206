"""The spiral: prune a step, recover by distillation from the unpruned teacher, repeat.

Round k prunes the current student to `target ** (k / rounds)` of the teacher's MACs (a geometric
schedule: every round removes the same share of what is left), then distills it for
`epochs_per_round` epochs (the last round adds `final_epochs`). Each finished round is saved as a
model file plus a JSON record, and the distillation inside a round checkpoints every epoch, so an
interrupted spiral resumes at the epoch it stopped in.
"""

import copy
import json
import os
import time
from typing import Any, Callable, Dict, List, Tuple

from torch import nn

from ...artifacts import config_hash, remove_if_exists, write_json_atomic
from ...recipe import Recipe
from ..data import DataBundle, evaluate_top1
from ..models import count_macs_params, load_student, save_student
from .distill import distill
from .prune import UNSTRUCTURED_NOTE, conv_sparsity, keep_masks, prune, prune_unstructured


def macs_schedule(target_ratio: float, rounds: int) -> List[float]:
    return [target_ratio ** (k / float(rounds)) for k in range(1, rounds + 1)]


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


def spiral(teacher: nn.Module, data: DataBundle, recipe: Recipe, folder: str, *, teacher_key: str,
           log: Callable[[str], None] = print) -> Tuple[nn.Module, List[Dict[str, Any]]]:
    """Run (or resume) the prune→distill spiral; return the final student and one record per round."""
    os.makedirs(folder, exist_ok=True)
    pcfg, dcfg = recipe.prune, recipe.distill
    size = data.image_size
    teacher_macs, _ = count_macs_params(teacher, size)
    base = {"teacher": teacher_key, "prune": recipe.to_dict()["prune"], "distill": recipe.to_dict()["distill"],
            "seed": recipe.seed}
    if pcfg.method == "unstructured":
        return _unstructured(teacher, data, recipe, folder, base, log)

    student = copy.deepcopy(teacher)
    records: List[Dict[str, Any]] = []
    schedule = macs_schedule(pcfg.target_macs_ratio, pcfg.rounds)
    previous = config_hash(base)
    for k, ratio in enumerate(schedule, start=1):
        key = config_hash({"previous": previous, "round": k, "ratio": ratio})
        previous = key
        done = _load_round(folder, k, key)
        if done is not None:
            student, record = done
            records.append(record)
            log("round {}/{}: reused ({:.1%} of teacher MACs, val top-1 {:.2f}%)".format(
                k, len(schedule), record["macs_ratio"], record["top1"]))
            continue
        started = time.perf_counter()
        log("round {}/{}: prune to {:.1%} of the teacher's MACs".format(k, len(schedule), ratio))
        result = prune(student, int(ratio * teacher_macs), size, method=pcfg.method,
                       allocation=pcfg.allocation, round_to=pcfg.round_to,
                       max_layer_ratio=pcfg.max_layer_ratio, log=log)
        student = result.model
        top1_pruned = evaluate_top1(student, data.val_loader())
        log("round {}/{}: val top-1 right after pruning {:.2f}%".format(k, len(schedule), top1_pruned))
        epochs = dcfg.epochs_per_round + (dcfg.final_epochs if k == len(schedule) else 0)
        history = distill(student, teacher, data, epochs, dcfg.optimizer, dcfg.alpha, dcfg.temperature,
                          checkpoint=os.path.join(folder, "round{}.train.pt".format(k)),
                          key=config_hash({"round": key, "width_spec": result.width_spec}),
                          seed=recipe.seed + k, desc="round {} distill".format(k), log=log)
        top1 = history[-1]["val_top1"] if history else evaluate_top1(student, data.val_loader())
        record = {"round": k, "key": key, "target_macs_ratio": round(ratio, 5),
                  "macs": result.macs_after, "params": result.params_after,
                  "macs_ratio": round(result.macs_after / float(teacher_macs), 5),
                  "channel_sparsity": round(result.channel_sparsity, 5),
                  "top1_after_prune": round(top1_pruned, 3), "top1": round(top1, 3),
                  "epochs": epochs, "history": history, "width_spec": result.width_spec,
                  "seconds": round(time.perf_counter() - started, 2)}
        save_student(os.path.join(folder, "round{}.pt".format(k)), student, meta={"round": k})
        write_json_atomic(os.path.join(folder, "round{}.json".format(k)), record)
        remove_if_exists(os.path.join(folder, "round{}.train.pt".format(k)))
        records.append(record)
    return student, records


def _unstructured(teacher: nn.Module, data: DataBundle, recipe: Recipe, folder: str, base: Dict[str, Any],
                  log: Callable[[str], None]) -> Tuple[nn.Module, List[Dict[str, Any]]]:
    pcfg, dcfg = recipe.prune, recipe.distill
    key = config_hash(dict(base, round=1))
    done = _load_round(folder, 1, key)
    if done is not None:
        return done[0], [done[1]]
    log("unstructured pruning to {:.0%} sparsity. Note: {}".format(pcfg.sparsity, UNSTRUCTURED_NOTE))
    started = time.perf_counter()
    student = copy.deepcopy(teacher)
    masks = prune_unstructured(student, pcfg.sparsity)  # deterministic, so a resume gets the same masks
    top1_pruned = evaluate_top1(student, data.val_loader())
    epochs = dcfg.epochs_per_round + dcfg.final_epochs
    history = distill(student, teacher, data, epochs, dcfg.optimizer, dcfg.alpha, dcfg.temperature,
                      checkpoint=os.path.join(folder, "round1.train.pt"), key=key, seed=recipe.seed + 1,
                      desc="unstructured distill", post_step=keep_masks(masks), log=log)
    macs, params = count_macs_params(student, data.image_size)
    teacher_macs, _ = count_macs_params(teacher, data.image_size)
    record = {"round": 1, "key": key, "method": "unstructured", "sparsity": round(conv_sparsity(student), 5),
              "note": UNSTRUCTURED_NOTE, "macs": macs, "params": params,
              "macs_ratio": round(macs / float(teacher_macs), 5), "top1_after_prune": round(top1_pruned, 3),
              "top1": history[-1]["val_top1"], "epochs": epochs, "history": history,
              "seconds": round(time.perf_counter() - started, 2)}
    save_student(os.path.join(folder, "round1.pt"), student, meta={"round": 1, "unstructured": True})
    write_json_atomic(os.path.join(folder, "round1.json"), record)
    remove_if_exists(os.path.join(folder, "round1.train.pt"))
    return student, [record]

