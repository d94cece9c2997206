"""Per-layer precision fallback to an accuracy budget.

Greedy by sensitivity: keep the most sensitive convolution in float, re-measure the top-1, and go on
until the INT8 model is within `max_drop` top-1 points of the FP32 model on the same images. A greedy
set is small, not proven minimal: a later, less sensitive layer may make an earlier one unnecessary.
Every step is recorded, so the summary shows what each kept layer bought.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .evaluate import Batches, logits, top1
from .qdq import fused_followers, keep_float, write_cpu
from .sensitivity import sensitivity


def fallback(qdq_model: Any, sensitivities: List[Dict[str, Any]], batches: Batches, fp32_top1: float,
             max_drop: Optional[float], threads: Optional[int] = None,
             log: Callable[[str], None] = lambda line: None) -> Dict[str, Any]:
    """The kept layers (most sensitive first) and the top-1 after each; no budget (None) keeps none."""
    order = [s["node"] for s in sensitivities]
    kept: List[str] = []
    current = top1(qdq_model, batches, threads)
    steps = [{"kept": 0, "node": None, "top1": current}]
    while max_drop is not None and fp32_top1 - current > max_drop and len(kept) < len(order):
        kept.append(order[len(kept)])
        current = top1(keep_float(qdq_model, kept), batches, threads)
        steps.append({"kept": len(kept), "node": kept[-1], "top1": current})
        log("  fallback: {} layer(s) in float -> top-1 {:.2f}% ({:+.2f} vs FP32)".format(
            len(kept), current, current - fp32_top1))
    return {"kept": kept, "top1_before": steps[0]["top1"], "top1_after": current, "fp32_top1": fp32_top1,
            "max_drop": max_drop, "met": max_drop is None or fp32_top1 - current <= max_drop, "steps": steps}


def fallback_to_budget(qdq_model: Any, fp32_path: str, batches: Batches, held_out: Callable[[], np.ndarray],
                       fp32_top1: float, max_drop: Optional[float], threads: Optional[int] = None,
                       log: Callable[[str], None] = lambda line: None) -> Dict[str, Any]:
    """The fallback's whole record. Sensitivities (on `held_out()` images) are measured only when the
    PTQ model misses the budget: within it nothing is kept and nothing more is spent."""
    ptq_top1 = top1(qdq_model, batches, threads)
    base = {"max_drop": max_drop, "fp32_top1": fp32_top1, "metric": "kl", "sensitivity": [], "samples": 0}
    if max_drop is None or fp32_top1 - ptq_top1 <= max_drop:
        return dict(base, kept=[], kept_layers=[], top1_before=ptq_top1, top1_after=ptq_top1, met=True,
                    steps=[{"kept": 0, "node": None, "top1": ptq_top1}])
    images = held_out()
    log("fallback: PTQ top-1 {:.2f}% is {:.2f} points under FP32, over the {} budget; sensitivity of each layer "
        "on {} held-out calibration images".format(ptq_top1, fp32_top1 - ptq_top1, max_drop, len(images)))
    sens = sensitivity(qdq_model, logits(fp32_path, images, threads), images, threads, log)
    result = fallback(qdq_model, sens, batches, fp32_top1, max_drop, threads, log)
    kl = {s["node"]: s["kl"] for s in sens}
    result["kept_layers"] = [{"node": node, "kl": kl[node]} for node in result["kept"]]
    return dict(base, sensitivity=sens, samples=int(len(images)), **result)


# what onnxruntime's CPU flavour quantizes beside the convolutions (and the TensorRT flavour leaves in float),
# in the order the search leaves them out after every convolution: pure data movement (Flatten, Reshape)
# and activations take their neighbours' scales and are not tried alone
_CPU_ONLY = ("MatMul", "Gemm", "Mul", "Add", "GlobalAveragePool", "AveragePool", "Sigmoid", "Concat")


def _followers(model: Any, layer: str) -> List[str]:
    node = next(n for n in model.graph.node if n.name == layer)
    return fused_followers(model, layer) if node.op_type == "Conv" else []


def _nodes(layers: Sequence[str], with_followers: Dict[str, List[str]]) -> List[str]:
    return [m for layer in layers for m in with_followers[layer]]


def _fewest(start: int, most: int, meets: Callable[[int], bool]) -> int:
    """The fewest layers left out (from `start`) that meet the budget, in O(log n) scorings: steps of
    1, 2, 4, ... until one meets it, then halving back between the last miss and that step. `most` when
    none does. Each step is a quantization and an eval pass, so on ImageNet a one-at-a-time walk over 60
    layers would take hours."""
    if meets(start) or start >= most:
        return start
    missed, step = start, 1
    while True:
        tried = min(missed + step, most)
        if meets(tried):
            break
        if tried >= most:
            return most
        missed, step = tried, step * 2
    while tried - missed > 1:
        middle = (missed + tried) // 2
        if meets(middle):
            tried = middle
        else:
            missed = middle
    return tried


def cpu_flavour(fp32_path: str, dst: str, ranges: Dict[str, Any], result: Dict[str, Any], batches: Batches,
                per_channel: bool, reduce_range: bool, threads: Optional[int] = None,
                log: Callable[[str], None] = lambda line: None) -> Dict[str, Any]:
    """The onnxruntime CPU flavour at `dst` without the kept layers, scored on its own. It also quantizes
    adds and pools, in unsigned 8 bits, so it can miss a budget the Q/DQ flavour meets (digits-mobilenetv2
    with entropy: 69.4% with the 15 layers the Q/DQ flavour keeps, FP32 94.7%). Then it leaves out the next
    most sensitive layers too, the fewest that meet the budget (searched in steps of 1, 2, 4, ... then
    halved back, see `_fewest`), or all of them when none does. A layer left out
    takes what follows it in float too (its activation and the Add it feeds, as in TensorRT's fusion); the
    ops only this flavour quantizes (the head, squeeze-excite multiplies and pools, adds) come last, in
    graph order."""
    import onnx

    budget, fp32_top1 = result["max_drop"], result["fp32_top1"]
    model = onnx.load(fp32_path)
    order = list(result["kept"]) + [s["node"] for s in result["sensitivity"] if s["node"] not in result["kept"]]
    with_followers = {layer: [layer] + _followers(model, layer) for layer in order}
    if result["sensitivity"]:
        covered = {m for nodes in with_followers.values() for m in nodes}
        tail = [n.name for n in model.graph.node if n.op_type in _CPU_ONLY and n.name not in covered]
        order += tail
        with_followers.update((name, [name]) for name in tail)
    scores: Dict[int, float] = {}  # in the order scored: the last one is the file at `dst`

    def scored(count: int) -> bool:
        """Score the flavour with the first `count` layers left out; True when it meets the budget."""
        if count not in scores:
            write_cpu(fp32_path, dst, ranges, per_channel, reduce_range, exclude=_nodes(order[:count], with_followers))
            scores[count] = top1(dst, batches, threads)
            if count > len(result["kept"]):
                log("  fallback: the CPU flavour scores {:.2f}% ({:+.2f} vs FP32) leaving out {} layer(s)".format(
                    scores[count], scores[count] - fp32_top1, count))
        return budget is None or fp32_top1 - scores[count] <= budget

    n = _fewest(len(result["kept"]), len(order), scored)
    met, score, nodes = scored(n), scores[n], _nodes(order[:n], with_followers)
    if n != list(scores)[-1]:  # `dst` holds the last one scored: write the chosen one again
        write_cpu(fp32_path, dst, ranges, per_channel, reduce_range, exclude=nodes)
    if not met:
        log("fallback: note: the onnxruntime CPU flavour scores {:.2f}%, {:.2f} points under FP32, over the {} "
            "budget{}".format(score, fp32_top1 - score, budget, "" if result["sensitivity"] else
                              " (the Q/DQ flavour met it, so no layer sensitivity was measured)"))
    return {"excluded": order[:n], "excluded_nodes": nodes, "top1": score, "met": met}
