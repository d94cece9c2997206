"""Knowledge distillation: the `distill` verb, and `train`, the one-call form of the Trainer.

    loss = (1 - alpha) * CE(y, s) + alpha * T² * KL(softmax(t / T) || softmax(s / T))

The loop itself (placement, DDP, resume, telemetry) is `edgekit.host.train.Trainer`; the loss is
`edgekit.host.train.LogitKD` (`kd_loss` is re-exported here). Both verbs checkpoint after every epoch
(atomically) and, started again with the same checkpoint path and key, resume after the last
finished epoch, with any number of processes.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence

from torch import nn

from ...recipe import OptimizerConfig, TrainConfig
from ..data import DataBundle
from ..dist import Dist
from ..train import (
    AfterStep,
    Callback,
    Checkpoint,
    CrossEntropy,
    LogitKD,
    Trainer,
    autocast_dtype,
    device_batches,
    kd_loss,
    make_optimizer,
    probe_loader,
    schedule_factor,
)

__all__ = ["autocast_dtype", "device_batches", "distill", "kd_loss", "make_optimizer", "probe_loader",
           "schedule_factor", "train"]


def train(model: nn.Module, data: DataBundle, epochs: int, opt_cfg: OptimizerConfig, *,
          checkpoint: str, key: str, seed: int, desc: str,
          teacher: Optional[nn.Module] = None, alpha: float = 0.0, temperature: float = 1.0,
          post_step: Optional[Callable[[nn.Module], None]] = None,
          log: Callable[[str], None] = print, train_cfg: Optional[TrainConfig] = None,
          dist: Optional[Dist] = None) -> List[Dict[str, Any]]:
    """Train `model` in place for `epochs`: by distillation with a `teacher` and alpha > 0, else by
    cross-entropy (with the optimizer's label smoothing). `post_step(model)` runs after every step.
    Returns the per-epoch history (loss, val top-1, seconds); see Trainer.fit."""
    loss = (LogitKD(teacher, alpha, temperature) if teacher is not None and alpha > 0.0
            else CrossEntropy(opt_cfg.label_smoothing))
    callbacks = [AfterStep(post_step)] if post_step is not None else []
    trainer = Trainer(loss, opt_cfg, desc=desc, train_cfg=train_cfg, callbacks=callbacks, log=log, dist=dist)
    return trainer.fit(model, data, epochs, seed=seed, checkpoint=Checkpoint(checkpoint, key))


def distill(student: nn.Module, teacher: nn.Module, data: DataBundle, epochs: int, opt_cfg: OptimizerConfig,
            alpha: float, temperature: float, *, checkpoint: str, key: str, seed: int, desc: str = "distill",
            callbacks: Sequence[Callback] = (), log: Callable[[str], None] = print,
            train_cfg: Optional[TrainConfig] = None, dist: Optional[Dist] = None) -> List[Dict[str, Any]]:
    """Train `student` from `teacher` with the KD loss above; resumable through `checkpoint`."""
    trainer = Trainer(LogitKD(teacher, alpha, temperature), opt_cfg, desc=desc, train_cfg=train_cfg,
                      callbacks=callbacks, log=log, dist=dist)
    return trainer.fit(student, data, epochs, seed=seed, checkpoint=Checkpoint(checkpoint, key))
