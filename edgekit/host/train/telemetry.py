"""Loader against step, and how long the rest will take: measured before it is predicted.

In the first epoch of a run the steps after the first two (cudnn autotuning and compilation happen
there) are timed, with the time spent waiting for the next batch apart. Two lines come of it:
  - the throughput line: the loader's img/s, the step's, together, and which bounds the run. On a
    long epoch it comes once 10 steps are timed, with an ETA of the training steps left; on a short
    epoch at its end, over the steps there were;
  - after the first epoch, when more follow: the ETA of the remaining epochs, each costing its steps
    at the measured rate plus what this epoch spent outside them (evaluation, the checkpoint).
A rate never rounds to 0: below 10 img/s it keeps two significant digits.
"""

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional

from .callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run

MIN_TIMED_STEPS = 10  # a mid-epoch prediction waits for this many timed steps
WARMUP_STEPS = 2  # untimed at the start of the first epoch


def probe_loader(loader: Any, max_batches: int = 20, max_seconds: float = 5.0) -> float:
    """Images per second the loader delivers on its own (the first batch, worker start-up, excluded)."""
    it = iter(loader)
    try:
        next(it)
    except StopIteration:
        return 0.0
    images = 0
    started = time.perf_counter()
    for _ in range(max_batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        images += int(batch[0].shape[0])
        if time.perf_counter() - started > max_seconds:
            break
    del it
    seconds = time.perf_counter() - started
    return images / seconds if seconds > 0 and images else float("inf")


def format_eta(seconds: float) -> str:
    """2h05m / 3m35s / 42s / 0.4s: a short span keeps a decimal rather than read as nothing."""
    if seconds < 9.95:
        return "{:.1f}s".format(max(0.0, seconds))
    seconds = int(round(seconds))
    if seconds >= 3600:
        return "{}h{:02d}m".format(seconds // 3600, (seconds % 3600) // 60)
    return "{}m{:02d}s".format(seconds // 60, seconds % 60) if seconds >= 60 else "{}s".format(seconds)


def format_rate(img_s: float) -> str:
    """12,345 / 56.3 / 0.63: whole numbers from 100 up, then one decimal, then two significant digits."""
    if img_s >= 100:
        return "{:,.0f}".format(img_s)
    if img_s >= 10:
        return "{:.1f}".format(img_s)
    return "{:.2g}".format(img_s)


@dataclass
class Window:
    """The timed steps of the first epoch: how many, over how long, how much of it spent waiting for batches."""

    steps: int
    seconds: float
    waited: float
    batch_size: int

    @property
    def step_seconds(self) -> float:
        return self.seconds / self.steps

    def rates(self, loader_img_s: Optional[float]) -> Dict[str, float]:
        images = self.steps * self.batch_size
        loader = images / max(self.waited, 1e-9) if loader_img_s is None else loader_img_s
        return {
            "loader": loader,
            "step": images / max(self.seconds - self.waited, 1e-9),
            "together": images / self.seconds,
        }


def throughput_line(
    desc: str,
    window: Window,
    loader_img_s: Optional[float],
    world_size: int,
    eta_seconds: Optional[float] = None,
    epochs: int = 1,
) -> str:
    rates = window.rates(loader_img_s)
    text = "{}: loader {} img/s, step {} img/s, together {} img/s per process{} ({}-bound)".format(
        desc,
        format_rate(rates["loader"]),
        format_rate(rates["step"]),
        format_rate(rates["together"]),
        " x {} processes".format(world_size) if world_size > 1 else "",
        "loader" if rates["loader"] < rates["step"] else "step",
    )
    if eta_seconds is None:
        return "{}, over {} timed step(s)".format(text, window.steps)
    return "{}; ETA {} for the training steps of {} epoch(s), evaluation timed after the first".format(
        text, format_eta(eta_seconds), epochs
    )


def epoch_estimate(steps_per_epoch: int, step_seconds: float, epoch_seconds: float, train_seconds: float) -> float:
    """An epoch's seconds: its steps at the steady rate, plus what the measured epoch spent outside its steps."""
    return steps_per_epoch * step_seconds + max(0.0, epoch_seconds - train_seconds)


def eta_line(desc: str, remaining_epochs: int, per_epoch: float, outside_steps: float) -> str:
    return "{}: ETA {} for the remaining {} epoch(s) ({} each, {} of it evaluation and checkpoint)".format(
        desc,
        format_eta(remaining_epochs * per_epoch),
        remaining_epochs,
        format_eta(per_epoch),
        format_eta(outside_steps),
    )


class Telemetry(Callback):
    """The throughput and ETA lines above, from rank 0 (which alone logs)."""

    def __init__(self) -> None:
        self.loader_img_s: Optional[float] = None
        self.window: Optional[Window] = None
        self._opened: Optional[float] = None
        self._steps, self._waited = 0, 0.0

    def on_fit_start(self, run: "Run") -> None:
        # With workers the loader runs beside the step, so it is timed alone first; without, it runs
        # inside the step's loop and the time spent waiting for batches measures it for free.
        if run.start_epoch < run.epochs and run.dist.is_writer and run.data.workers > 0:
            self.loader_img_s = probe_loader(run.loader)

    def _first(self, run: "Run") -> bool:
        return run.epoch == run.start_epoch and run.dist.is_writer

    def on_step_end(self, run: "Run") -> None:
        if not self._first(run) or self.window is not None:
            return
        if self._opened is not None:
            self._steps += 1
            self._waited += run.waited
        if run.step == min(WARMUP_STEPS, run.steps_per_epoch - 1):
            self._opened, self._steps, self._waited = time.perf_counter(), 0, 0.0
        elif self._opened is not None:
            last = run.step == run.steps_per_epoch
            if last or (self._steps >= MIN_TIMED_STEPS and run.step % run.cfg.log_every == 0):
                self._close(run, last)

    def _close(self, run: "Run", last: bool) -> None:
        run.sync()  # the clock is honest only once the device has finished the timed steps
        assert self._opened is not None
        self.window = Window(self._steps, time.perf_counter() - self._opened, self._waited, run.data.batch_size)
        eta = None
        if not last:
            eta = ((run.epochs - run.epoch) * run.steps_per_epoch - run.step) * self.window.step_seconds
        run.log(
            throughput_line(
                run.desc, self.window, self.loader_img_s, run.dist.world_size, eta, run.epochs - run.start_epoch
            )
        )

    def on_epoch_end(self, run: "Run", entry: Dict[str, Any]) -> None:
        remaining = run.epochs - run.epoch - 1
        if not self._first(run) or remaining <= 0:
            return
        epoch_seconds = time.perf_counter() - run.epoch_started
        step_seconds = self.window.step_seconds if self.window else run.train_seconds / run.steps_per_epoch
        per_epoch = epoch_estimate(run.steps_per_epoch, step_seconds, epoch_seconds, run.train_seconds)
        run.log(eta_line(run.desc, remaining, per_epoch, max(0.0, epoch_seconds - run.train_seconds)))
