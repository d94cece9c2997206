"""The optimizer and the learning-rate schedule, both functions of progress so a resume can start anywhere."""

import math
from typing import Callable, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ...recipe import OptimizerConfig


def schedule_factor(cfg: OptimizerConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at a step: a closed form, so a resumed run can start at any step
    (and a run resumed with another world size, thus another step count, at the same progress)."""
    total_steps = max(1, total_steps)
    if cfg.schedule == "onecycle":
        # Linear warm-up, then cosine decay to zero: the one-cycle shape, defined for any step
        # count (torch's OneCycleLR divides by zero on the few steps of a smoke run).
        warmup = max(1, int(round(total_steps * min(max(cfg.warmup_fraction, 0.0), 0.9))))

        def onecycle(step: int) -> float:
            if step < warmup:
                return 0.04 + 0.96 * step / float(warmup)
            progress = min(1.0, (step - warmup) / float(max(1, total_steps - warmup)))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        return onecycle
    if cfg.schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / float(total_steps)))
    return lambda step: 1.0


def build_optimizer(parameters: Iterable[nn.Parameter], cfg: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases: decaying them only hurts small data sets.
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    for p in parameters:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: OptimizerConfig, lr: float, total_steps: int, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    factor = schedule_factor(cfg, total_steps)
    for group in opt.param_groups:
        group["initial_lr"] = lr  # a loaded optimizer state carries the rate of the old world size
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(step + start_step))


def make_optimizer(
    model: nn.Module, cfg: OptimizerConfig, total_steps: int, lr: Optional[float] = None, start_step: int = 0
) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """(optimizer, LambdaLR scheduler) for `cfg`; `lr` overrides cfg.lr (e.g. scaled by the world size)."""
    lr = cfg.lr if lr is None else lr
    opt = build_optimizer(model.parameters(), cfg, lr)
    return opt, build_scheduler(opt, cfg, lr, total_steps, start_step)
