"""Knowledge distillation, and the resumable training loop the teacher shares with it.

    loss = (1 - alpha) * CE(y, s) + alpha * T² * KL(softmax(t / T) || softmax(s / T))

The T² factor keeps the gradient scale of the soft term independent of T (Hinton et al., 2015).
`train` writes a checkpoint after every epoch (atomically); started again with the same
checkpoint path and key it resumes after the last finished epoch.
"""

import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ...artifacts import atomic_path
from ...errors import EdgekitError
from ...recipe import OptimizerConfig
from ..data import DataBundle, evaluate_top1


def kd_loss(student_logits: torch.Tensor, teacher_logits: Optional[torch.Tensor], labels: torch.Tensor,
            alpha: float, temperature: float) -> torch.Tensor:
    """(1-alpha)·CE(y, s) + alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch."""
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0.0:
        return ce
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * t * t * kl


def make_optimizer(model: nn.Module, cfg: OptimizerConfig, total_steps: int):  # noqa: ANN201
    # No weight decay on BatchNorm and biases: decaying them only hurts small data sets.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    total_steps = max(1, total_steps)
    if cfg.schedule == "onecycle":
        # Linear warm-up, then cosine decay to zero: the one-cycle shape, defined for any step
        # count (torch's OneCycleLR divides by zero on the few steps of a smoke run).
        warmup = max(1, int(round(total_steps * min(max(cfg.warmup_fraction, 0.0), 0.9))))

        def factor(step: int) -> float:
            if step < warmup:
                return 0.04 + 0.96 * step / float(warmup)
            progress = min(1.0, (step - warmup) / float(max(1, total_steps - warmup)))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return opt, sched


def _progress(iterable: Any, total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety, never a reason to fail
        return iterable
    # disable=None: a bar on a terminal, nothing in logs (each epoch still prints one line).
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=None, dynamic_ncols=True,
                file=sys.stderr)


def train(model: nn.Module, data: DataBundle, epochs: int, opt_cfg: OptimizerConfig, *,
          checkpoint: str, key: str, seed: int, desc: str,
          teacher: Optional[nn.Module] = None, alpha: float = 0.0, temperature: float = 1.0,
          post_step: Optional[Callable[[nn.Module], None]] = None,
          log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Train `model` in place for `epochs`; with a `teacher`, by distillation. Resumable.

    `checkpoint` is written after every epoch and holds model, optimizer, scheduler and history;
    it is reused only when its `key` matches (same configuration, same architecture).
    Returns the per-epoch history: loss, val top-1, seconds.
    """
    loader = data.train_loader(torch.Generator())
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("training set smaller than one batch")
    opt, sched = make_optimizer(model, opt_cfg, epochs * steps_per_epoch)
    history: List[Dict[str, Any]] = []
    start_epoch = 0
    if os.path.exists(checkpoint):
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged checkpoint of our own only costs a restart
            state = None
        if isinstance(state, dict) and state.get("key") == key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history = list(state["history"])
            start_epoch = int(state["epoch"]) + 1
            if start_epoch < epochs:
                log("{}: resuming after epoch {}/{} from {}".format(desc, start_epoch, epochs, checkpoint))
    if teacher is not None:
        teacher.eval()
    label_smoothing = opt_cfg.label_smoothing
    for epoch in range(start_epoch, epochs):
        model.train()
        # The shuffle order depends only on (seed, epoch), so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        loader = data.train_loader(generator)
        started = time.perf_counter()
        total_loss, batches = 0.0, 0
        bar = _progress(loader, steps_per_epoch, "{} {}/{}".format(desc, epoch + 1, epochs))
        for images, labels in bar:
            if data.batch_augment is not None:
                images = data.batch_augment(images, generator)
            logits = model(images)
            if teacher is not None and alpha > 0.0:
                with torch.no_grad():
                    teacher_logits = teacher(images)
                loss = kd_loss(logits, teacher_logits, labels, alpha, temperature)
            else:
                loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise EdgekitError("{}: loss became {} at epoch {}; lower the learning rate".format(
                    desc, value, epoch + 1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if post_step is not None:
                post_step(model)
            total_loss += value
            batches += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss="{:.3f}".format(total_loss / batches), refresh=False)
        top1 = evaluate_top1(model, data.val_loader())
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "loss": round(total_loss / max(batches, 1), 5),
                        "val_top1": round(top1, 3), "seconds": round(seconds, 2)})
        # Saved before the epoch is announced: what the log calls finished is on disk.
        with atomic_path(checkpoint) as tmp:
            torch.save({"key": key, "epoch": epoch, "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "history": history}, tmp)
        log("{} epoch {}/{}: loss {:.4f}, val top-1 {:.2f}%, {:.1f} s".format(
            desc, epoch + 1, epochs, total_loss / max(batches, 1), top1, seconds))
    return history


def distill(student: nn.Module, teacher: nn.Module, data: DataBundle, epochs: int, opt_cfg: OptimizerConfig,
            alpha: float, temperature: float, *, checkpoint: str, key: str, seed: int, desc: str = "distill",
            post_step: Optional[Callable[[nn.Module], None]] = None,
            log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Train `student` from `teacher` with the KD loss above; resumable through `checkpoint`."""
    return train(student, data, epochs, opt_cfg, checkpoint=checkpoint, key=key, seed=seed, desc=desc,
                 teacher=teacher, alpha=alpha, temperature=temperature, post_step=post_step, log=log)
