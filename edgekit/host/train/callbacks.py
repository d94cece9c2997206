"""What a run does beside the step: checkpoint and resume, DDP, progress. (Telemetry: telemetry.py.)

A `Callback` gets the run's state (`Run`) at these points, in the order the Trainer lists them
(DDP, the caller's, checkpoint, progress, telemetry):
    on_fit_start(run)        placed, optimizer built, resumed; before the first epoch
    on_epoch_start(run)      run.epoch set and the shuffle seeded
    on_after_backward(run)   gradients ready, before the optimizer step
    on_step_end(run)         after the optimizer and scheduler steps (run.step, run.logits, run.loss)
    on_epoch_end(run, entry) after evaluation; `entry` is the epoch's history record
    on_fit_end(run)          always, on the way out of a failure too
"""

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

import torch
from torch import nn

from ...artifacts import atomic_path, config_hash

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run


class Callback:
    def on_fit_start(self, run: "Run") -> None:
        pass

    def on_epoch_start(self, run: "Run") -> None:
        pass

    def on_after_backward(self, run: "Run") -> None:
        pass

    def on_step_end(self, run: "Run") -> None:
        pass

    def on_epoch_end(self, run: "Run", entry: Dict[str, Any]) -> None:
        pass

    def on_fit_end(self, run: "Run") -> None:
        pass


class AfterStep(Callback):
    """A function of the model after every optimizer step (e.g. re-applying pruning masks)."""

    def __init__(self, fn: Callable[[nn.Module], None]) -> None:
        self.fn = fn

    def on_step_end(self, run: "Run") -> None:
        self.fn(run.model)


class Checkpoint(Callback):
    """Model, loss modules, optimizer and history after every epoch, written atomically by rank 0.

    The file holds no world size that matters: a run resumes with any number of processes. It is
    reused only when its key matches: the caller's `key` (what the caller's result depends on) folded
    with the loss's settings, the optimizer's and the epoch count, so a run with a changed recipe
    starts afresh instead of resuming a stale one. Read with weights_only=True: tensors and plain data.
    """

    def __init__(self, path: str, key: str) -> None:
        self.path, self.key = path, key

    def full_key(self, run: "Run") -> str:
        return config_hash(
            {
                "key": self.key,
                "loss": run.loss.config(),
                "optimizer": dataclasses.asdict(run.opt_cfg),
                "epochs": run.epochs,
            }
        )

    def read(self, key: str) -> Optional[Dict[str, Any]]:
        if not os.path.exists(self.path):
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged checkpoint of our own only costs a restart
            return None
        return state if isinstance(state, dict) and state.get("key") == key else None

    def restore(self, run: "Run") -> None:
        """Load the last finished epoch into `run` when the file is this run's; rank 0 reads and hands it round."""
        key = self.full_key(run)
        state = run.dist.on_writer(lambda: self.read(key))
        if state is None:
            return
        run.model.load_state_dict(state["model"])
        extra = run.loss.modules()
        if extra is not None and state.get("loss"):
            extra.load_state_dict(state["loss"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.history = list(state["history"])
        run.start_epoch = int(state["epoch"]) + 1
        if run.start_epoch < run.epochs:
            run.log("{}: resuming after epoch {}/{} from {}".format(run.desc, run.start_epoch, run.epochs, self.path))

    def on_epoch_end(self, run: "Run", entry: Dict[str, Any]) -> None:
        # Saved before the epoch is announced: what the log calls finished is on disk.
        if not run.dist.is_writer:
            return
        extra = run.loss.modules()
        state = {
            "key": self.full_key(run),
            "epoch": run.epoch,
            "steps_per_epoch": run.steps_per_epoch,
            "world_size": run.dist.world_size,
            "model": _cpu_state(run.model),
            "loss": _cpu_state(extra) if extra is not None else {},
            "optimizer": run.optimizer.state_dict(),
            "history": run.history,
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


def _cpu_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class DDP(Callback):
    """DistributedDataParallel under torchrun: the step runs through the wrapper, each rank's epoch
    shuffles its own shard (DistributedSampler.set_epoch) and augments with its own generator, and the
    loss's own modules (which DDP does not wrap) start equal and average their gradients."""

    def on_fit_start(self, run: "Run") -> None:
        from torch.nn.parallel import DistributedDataParallel

        device = run.placement.device
        ids = [device.index] if device.type == "cuda" else None
        run.step_model = DistributedDataParallel(run.model, device_ids=ids)
        extra = run.loss.modules()
        if extra is not None:
            for tensor in extra.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)

    def on_epoch_start(self, run: "Run") -> None:
        if run.sampler is not None:
            run.sampler.set_epoch(run.epoch)
        run.augment_generator = torch.Generator().manual_seed(run.seed * 100003 + run.epoch + 1000003 * run.dist.rank)

    def on_after_backward(self, run: "Run") -> None:
        extra = run.loss.modules()
        if extra is None:
            return
        for p in extra.parameters():
            if p.grad is not None:
                run.dist.all_reduce_mean(p.grad)


class Progress(Callback):
    """A tqdm bar on a terminal (nothing in logs), and one line per epoch in either."""

    def __init__(self) -> None:
        self._bar: Any = None

    def on_epoch_start(self, run: "Run") -> None:
        if not run.dist.is_writer:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # progress is a nicety, never a reason to fail
            return
        # disable=None: a bar on a terminal, nothing in logs (each epoch still prints one line).
        self._bar = tqdm(
            total=run.steps_per_epoch,
            desc="{} {}/{}".format(run.desc, run.epoch + 1, run.epochs),
            leave=False,
            disable=None,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_step_end(self, run: "Run") -> None:
        if self._bar is None:
            return
        if run.read_loss is not None:
            self._bar.set_postfix(loss="{:.3f}".format(run.read_loss), refresh=False)
        self._bar.update(1)
        if run.step == run.steps_per_epoch:
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_end(self, run: "Run", entry: Dict[str, Any]) -> None:
        self._close()
        run.log(
            "{} epoch {}/{}: loss {:.4f}, val top-1 {:.2f}%, {:.1f} s".format(
                run.desc, run.epoch + 1, run.epochs, run.epoch_loss, run.epoch_top1, run.epoch_seconds
            )
        )

    def on_fit_end(self, run: "Run") -> None:
        self._close()
