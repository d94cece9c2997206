"""The state of one `Trainer.fit`: what the loss and the callbacks see and may change.

Its own module, below the Trainer, the losses and the callbacks, so each of them reads it without
importing another: the Trainer fills a `Run`, and a loss or a callback gets it at its hooks.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ...recipe import OptimizerConfig, TrainConfig
from ..data import DataBundle
from ..dist import Dist
from .placement import Placement

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - the host side runs Python 3.8+, where typing has Protocol
    Protocol = object  # type: ignore[assignment,misc]


class RunLoss(Protocol):
    """What a run needs of its loss (losses.Loss is the base every shipped loss derives from)."""

    def config(self) -> Dict[str, Any]: ...

    def modules(self) -> Optional[nn.Module]: ...

    def __call__(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Run:
    """One `fit`: what the loss and the callbacks see and may change (DDP sets `step_model`)."""

    model: nn.Module
    data: DataBundle
    epochs: int
    seed: int
    desc: str
    log: Callable[[str], None]
    dist: Dist
    cfg: TrainConfig
    opt_cfg: OptimizerConfig
    placement: Placement
    loss: RunLoss
    step_model: nn.Module = None  # type: ignore[assignment]
    optimizer: torch.optim.Optimizer = None  # type: ignore[assignment]
    scheduler: Any = None
    scaler: Any = None
    loader: Any = None
    sampler: Any = None
    generator: torch.Generator = field(default_factory=torch.Generator)
    augment_generator: Optional[torch.Generator] = None
    steps_per_epoch: int = 0
    start_epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    # the epoch under way
    epoch: int = 0
    step: int = 0
    epoch_started: float = 0.0
    train_seconds: float = 0.0  # the epoch's steps alone, evaluation excluded
    loss_sum: Optional[torch.Tensor] = None
    correct: Optional[torch.Tensor] = None
    # the step just taken
    logits: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    loss_value: Optional[torch.Tensor] = None
    waited: float = 0.0  # seconds spent waiting for this step's batch
    read_loss: Optional[float] = None  # the running mean loss, on the steps that read it
    # the epoch just finished
    epoch_loss: float = float("nan")
    epoch_top1: float = float("nan")
    epoch_seconds: float = 0.0

    def place(self, module: nn.Module) -> None:
        """`module` onto the run's device and memory layout."""
        module.to(self.placement.device)
        if self.placement.channels_last:
            module.to(memory_format=torch.channels_last)

    def sync(self) -> float:
        """The running loss sum, read: the host waits for the device."""
        return float(self.loss_sum) if self.loss_sum is not None else 0.0
