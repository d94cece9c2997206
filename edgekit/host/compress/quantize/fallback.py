"""Per-layer precision fallback to an accuracy budget.

Greedy by sensitivity: keep the most sensitive convolution in float, re-measure the top-1, and go on
until the INT8 model is within `max_drop` top-1 points of the FP32 model on the same images. A greedy
set is small, not proven minimal: a later, less sensitive layer may make an earlier one unnecessary.
Every step is recorded, so the summary shows what each kept layer bought.
"""

from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .evaluate import Batches, logits, top1
from .qdq import keep_float
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
