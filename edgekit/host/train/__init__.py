"""Training: a `Trainer` with a pluggable loss and callbacks, shared by the teacher, distillation and QAT.

    from edgekit.host.train import Checkpoint, LogitKD, Trainer
    trainer = Trainer(LogitKD(teacher, alpha=0.7, temperature=4.0), optimizer_cfg, desc="distill")
    history = trainer.fit(student, data, epochs, seed=0, checkpoint=Checkpoint("run.train.pt", key))

losses.py: the loss protocol, CrossEntropy, LogitKD, FeatureKD. callbacks.py: the hooks, Checkpoint,
DDP, Progress, AfterStep. telemetry.py: loader-vs-step and ETA lines. placement.py: device, precision
(bf16 resolved for the CPU), layout. optim.py: optimizer and schedule.
"""

from .callbacks import DDP, AfterStep, Callback, Checkpoint, Progress
from .losses import CrossEntropy, FeatureKD, LogitKD, Loss, Teacher, kd_loss
from .optim import make_optimizer, schedule_factor
from .placement import Placement, autocast_dtype, for_stage, resolve_precision
from .run import Run
from .telemetry import Telemetry, probe_loader
from .trainer import Trainer, device_batches

__all__ = [
    "DDP",
    "AfterStep",
    "Callback",
    "Checkpoint",
    "CrossEntropy",
    "FeatureKD",
    "LogitKD",
    "Loss",
    "Placement",
    "Progress",
    "Run",
    "Teacher",
    "Telemetry",
    "Trainer",
    "autocast_dtype",
    "device_batches",
    "for_stage",
    "kd_loss",
    "make_optimizer",
    "probe_loader",
    "resolve_precision",
    "schedule_factor",
]
