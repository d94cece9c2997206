"""The training loop: a model, a loss (losses.py), callbacks (callbacks.py, telemetry.py).

    trainer = Trainer(LogitKD(teacher, alpha=0.7, temperature=4.0), recipe.distill.optimizer, desc="distill")
    history = trainer.fit(student, data, epochs, seed=0, checkpoint=Checkpoint(path, key))

The loop runs on the TrainConfig's device and precision (autocast; a GradScaler for fp16),
channels_last on CUDA, the next batch copied on a side stream, and no host sync per step: loss and
accuracy are summed on the device and read every `train.log_every` steps. Under torchrun it is DDP
(edgekit.host.dist), every rank calling `fit` with the same arguments, rank 0 alone logging and
writing. The shuffle order depends only on (seed, epoch), so a resumed run sees the same batches.
"""

import math
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ...errors import EdgekitError
from ...recipe import OptimizerConfig, TrainConfig
from ..data import DataBundle, evaluate_counts
from ..dist import Dist
from ..dist import current as current_dist
from .callbacks import DDP, Callback, Checkpoint, Progress
from .losses import Loss
from .optim import build_optimizer, build_scheduler
from .placement import Placement
from .run import Run
from .telemetry import Telemetry


def device_batches(
    loader: Iterable,
    device: torch.device,
    memory_format: torch.memory_format,
    augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None,
    generator: Optional[torch.Generator] = None,
) -> Iterator[Any]:
    """(images, labels) on `device`. On CUDA the next batch is copied on a side stream while the
    current step computes: a copy on the compute stream would add ~10% to a 224x224 ResNet-50
    step (150 MB per batch of 256 at ~25 GB/s) even when non-blocking."""

    def prepare(batch: Any) -> Any:
        images, labels = batch
        if augment is not None:
            images = augment(images, generator)
        return (images.to(device, non_blocking=True, memory_format=memory_format), labels.to(device, non_blocking=True))

    if device.type != "cuda":
        for batch in loader:
            yield prepare(batch)
        return
    stream = torch.cuda.Stream(device)
    pending = None
    for batch in loader:
        with torch.cuda.stream(stream):
            ready = prepare(batch)
        if pending is not None:
            yield pending
        torch.cuda.current_stream(device).wait_stream(stream)
        for tensor in ready:
            tensor.record_stream(torch.cuda.current_stream(device))  # freed only after the step used it
        pending = ready
    if pending is not None:
        yield pending


def _restore(model: nn.Module, device: torch.device) -> None:
    # Back where the caller had it, in the default layout: export traces a CPU fp32 model as before.
    model.to(device)
    model.to(memory_format=torch.contiguous_format)


def _diverged(desc: str, value: float, epoch: int) -> EdgekitError:
    return EdgekitError("{}: loss became {} at epoch {}; lower the learning rate".format(desc, value, epoch + 1))


class Trainer:
    """Trains a model in place with a pluggable `loss`; resumable through a `Checkpoint`, DDP under torchrun.

    `train_cfg` is run as given (default: the recipe's that `dist.setup` saw); a stage resolves the
    recipe's for its device first (`placement.for_stage`). `callbacks` run after the DDP one and
    before checkpoint, progress and telemetry, at each hook (callbacks.py).
    """

    def __init__(
        self,
        loss: Loss,
        optimizer: OptimizerConfig,
        *,
        desc: str = "train",
        train_cfg: Optional[TrainConfig] = None,
        callbacks: Sequence[Callback] = (),
        log: Callable[[str], None] = print,
        dist: Optional[Dist] = None,
    ) -> None:
        self.loss, self.opt_cfg, self.desc = loss, optimizer, desc
        self.dist = dist or current_dist()
        self.cfg = train_cfg or self.dist.train or TrainConfig()
        self.callbacks = list(callbacks)
        self.log = log if self.dist.is_writer else (lambda _message: None)

    def fit(
        self, model: nn.Module, data: DataBundle, epochs: int, *, seed: int, checkpoint: Optional[Checkpoint] = None
    ) -> List[Dict[str, Any]]:
        """Train `model` for `epochs` (after those a matching checkpoint holds); return the per-epoch
        history (loss, val top-1, seconds). `model` and a teacher end where they started (device, layout)."""
        run = self._run(model, data, epochs, seed)
        callbacks = ([DDP()] if self.dist.distributed else []) + self.callbacks
        callbacks += ([checkpoint] if checkpoint is not None else []) + [Progress(), Telemetry()]
        home = next(model.parameters()).device
        try:
            self._prepare(run, checkpoint)
            self._hook(callbacks, "on_fit_start", run)
            if self.cfg.compile:
                run.step_model = torch.compile(run.step_model)  # type: ignore[assignment]
            val_loader = data.val_loader(
                shard=(self.dist.rank, self.dist.world_size) if self.dist.distributed else None,
                pin_memory=run.placement.device.type == "cuda",
            )
            for epoch in range(run.start_epoch, epochs):
                self._epoch(run, epoch, callbacks, val_loader)
        finally:
            self.loss.detach()
            _restore(model, home)
            self._hook(callbacks, "on_fit_end", run)
        return run.history

    @staticmethod
    def _hook(callbacks: Sequence[Callback], name: str, *args: Any) -> None:
        for callback in callbacks:
            getattr(callback, name)(*args)

    def _run(self, model: nn.Module, data: DataBundle, epochs: int, seed: int) -> Run:
        placement = Placement.of(self.cfg, self.dist)
        run = Run(
            model=model,
            data=data,
            epochs=epochs,
            seed=seed,
            desc=self.desc,
            log=self.log,
            dist=self.dist,
            cfg=self.cfg,
            opt_cfg=self.opt_cfg,
            placement=placement,
            loss=self.loss,
            step_model=model,
        )
        run.sampler = self.dist.train_sampler(data.train, seed * 100003)
        # One loader for the whole stage, so persistent workers survive epochs; reseeded per epoch.
        run.loader = data.train_loader(run.generator, sampler=run.sampler, pin_memory=placement.device.type == "cuda")
        run.steps_per_epoch = len(run.loader)
        if run.steps_per_epoch == 0:
            raise EdgekitError(
                "{}: the training set is smaller than one batch ({} images per process)".format(
                    self.desc, data.batch_size
                )
            )
        return run

    def _prepare(self, run: Run, checkpoint: Optional[Checkpoint]) -> None:
        """Placement, the loss's teacher and hooks, the optimizer, the resume, the schedule."""
        if run.placement.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        run.place(run.model)
        self.loss.attach(run)
        extra = self.loss.modules()
        parameters = list(run.model.parameters()) + (list(extra.parameters()) if extra is not None else [])
        lr = self.opt_cfg.lr * (self.dist.world_size if self.cfg.lr_scaling == "linear" else 1)
        run.optimizer = build_optimizer(parameters, self.opt_cfg, lr)
        if checkpoint is not None:
            checkpoint.restore(run)
        run.scheduler = build_scheduler(
            run.optimizer, self.opt_cfg, lr, run.epochs * run.steps_per_epoch, run.start_epoch * run.steps_per_epoch
        )
        run.scaler = torch.amp.GradScaler(run.placement.device.type, enabled=self.cfg.precision == "fp16")

    def _epoch(self, run: Run, epoch: int, callbacks: Sequence[Callback], val_loader: Any) -> None:
        run.model.train()
        run.epoch, run.step = epoch, 0
        run.generator.manual_seed(run.seed * 100003 + epoch)
        run.augment_generator = run.generator
        self._hook(callbacks, "on_epoch_start", run)
        run.epoch_started = time.perf_counter()
        # Summed on the device and read every log_every steps: no host sync per step.
        device = run.placement.device
        run.loss_sum = torch.zeros((), device=device)
        run.correct = torch.zeros((), device=device, dtype=torch.long)
        batches = device_batches(
            run.loader, device, run.placement.memory_format, run.data.batch_augment, run.augment_generator
        )
        fetch_started = time.perf_counter()
        for run.step, (images, labels) in enumerate(batches, start=1):
            run.waited = time.perf_counter() - fetch_started
            self._step(run, images, labels, callbacks)
            fetch_started = time.perf_counter()
        run.train_seconds = time.perf_counter() - run.epoch_started
        run.epoch_loss = self._epoch_loss(run)
        run.epoch_top1 = self._evaluate(run, val_loader)
        run.epoch_seconds = time.perf_counter() - run.epoch_started
        entry = {
            "epoch": epoch + 1,
            "loss": round(run.epoch_loss, 5),
            "val_top1": round(run.epoch_top1, 3),
            "seconds": round(run.epoch_seconds, 2),
        }
        run.history.append(entry)
        self._hook(callbacks, "on_epoch_end", run, entry)

    def _step(self, run: Run, images: torch.Tensor, labels: torch.Tensor, callbacks: Sequence[Callback]) -> None:
        with run.placement.autocast():
            logits = run.step_model(images)
            loss = self.loss(logits, images, labels)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        self._hook(callbacks, "on_after_backward", run)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        assert run.loss_sum is not None and run.correct is not None
        run.loss_sum += loss.detach()
        run.correct += (logits.detach().argmax(1) == labels).sum()
        run.logits, run.labels, run.loss_value = logits, labels, loss
        run.read_loss = None
        if run.step % self.cfg.log_every == 0 or run.step == run.steps_per_epoch:
            run.read_loss = run.sync() / run.step
            if not math.isfinite(run.read_loss):
                raise _diverged(run.desc, run.read_loss, run.epoch)
        self._hook(callbacks, "on_step_end", run)

    def _epoch_loss(self, run: Run) -> float:
        # Every rank has summed its shard; the mean over all ranks' batches is the epoch's loss.
        assert run.loss_sum is not None
        totals = torch.stack([run.loss_sum.float(), torch.tensor(float(run.step), device=run.placement.device)])
        self.dist.all_reduce_sum(totals)
        mean = float(totals[0] / totals[1])
        if not math.isfinite(mean):
            raise _diverged(run.desc, mean, run.epoch)
        return mean

    def _evaluate(self, run: Run, val_loader: Any) -> float:
        self.dist.sync_buffers(run.model)  # every rank scores the model rank 0 checkpoints
        device = run.placement.device
        hits, total = evaluate_counts(run.model, val_loader, device, run.placement.memory_format)
        counts = self.dist.all_reduce_sum(torch.tensor([hits, total], dtype=torch.float64, device=device))
        if float(counts[1]) == 0:
            raise EdgekitError("the validation split is empty")
        return 100.0 * float(counts[0]) / float(counts[1])
