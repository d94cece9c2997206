"""Knowledge distillation, and the resumable training loop the teacher shares with it.

    loss = (1 - alpha) * CE(y, s) + alpha * T² * KL(softmax(t / T) || softmax(s / T))

The T² factor keeps the gradient scale of the soft term independent of T (Hinton et al., 2015).
`train` writes a checkpoint after every epoch (atomically); started again with the same
checkpoint path and key it resumes after the last finished epoch, with any number of processes.

The loop runs on the recipe's `train` device and precision (autocast; a GradScaler for fp16),
channels_last on CUDA, the next batch copied on a side stream, the teacher under inference_mode
in the same autocast, and no host sync per step: loss and accuracy are summed on the device and
read every `train.log_every` steps. Under torchrun it is DDP (see edgekit.host.dist).
"""

import math
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ...artifacts import atomic_path
from ...errors import EdgekitError
from ...recipe import OptimizerConfig, TrainConfig
from ..data import DataBundle, evaluate_counts
from ..dist import Dist, resolve_device
from ..dist import current as current_dist


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


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    return _AUTOCAST[precision]


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


def _optimizer(model: nn.Module, cfg: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases: decaying them only hurts small data sets.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


def _scheduler(opt: torch.optim.Optimizer, cfg: OptimizerConfig, lr: float, total_steps: int,
               start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    factor = schedule_factor(cfg, total_steps)
    for group in opt.param_groups:
        group["initial_lr"] = lr  # a loaded optimizer state carries the rate of the old world size
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(step + start_step))


def make_optimizer(model: nn.Module, cfg: OptimizerConfig, total_steps: int, lr: Optional[float] = None,
                   start_step: int = 0):  # noqa: ANN201
    """(optimizer, LambdaLR scheduler) for `cfg`; `lr` overrides cfg.lr (e.g. scaled by the world size)."""
    lr = cfg.lr if lr is None else lr
    opt = _optimizer(model, cfg, lr)
    return opt, _scheduler(opt, cfg, lr, total_steps, start_step)


def _progress(iterable: Any, total: int, desc: str, enabled: bool = True) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety, never a reason to fail
        return iterable
    # disable=None: a bar on a terminal, nothing in logs (each epoch still prints one line).
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=None, dynamic_ncols=True,
                file=sys.stderr)


def _quiet(_message: str) -> None:
    pass


def _read_checkpoint(path: str, key: str) -> Optional[Dict[str, Any]]:
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged checkpoint of our own only costs a restart
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


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


def _format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return "{}h{:02d}m".format(seconds // 3600, (seconds % 3600) // 60)
    return "{}m{:02d}s".format(seconds // 60, seconds % 60) if seconds >= 60 else "{}s".format(seconds)


def device_batches(loader: Iterable, device: torch.device, memory_format: torch.memory_format,
                   augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None,
                   generator: Optional[torch.Generator] = None) -> Iterator[Any]:
    """(images, labels) on `device`. On CUDA the next batch is copied on a side stream while the
    current step computes: a copy on the compute stream would add ~10% to a 224x224 ResNet-50
    step (150 MB per batch of 256 at ~25 GB/s) even when non-blocking."""
    def prepare(batch: Any) -> Any:
        images, labels = batch
        if augment is not None:
            images = augment(images, generator)
        return (images.to(device, non_blocking=True, memory_format=memory_format),
                labels.to(device, non_blocking=True))

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


def _place(model: nn.Module, device: torch.device, channels_last: bool) -> None:
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)


def _restore(model: nn.Module, device: torch.device) -> None:
    # Back where the caller had it, in the default layout: export traces a CPU fp32 model as before.
    model.to(device)
    model.to(memory_format=torch.contiguous_format)


def train(model: nn.Module, data: DataBundle, epochs: int, opt_cfg: OptimizerConfig, *,
          checkpoint: str, key: str, seed: int, desc: str,
          teacher: Optional[nn.Module] = None, alpha: float = 0.0, temperature: float = 1.0,
          post_step: Optional[Callable[[nn.Module], None]] = None,
          log: Callable[[str], None] = print, train_cfg: Optional[TrainConfig] = None,
          dist: Optional[Dist] = None) -> List[Dict[str, Any]]:
    """Train `model` in place for `epochs`; with a `teacher`, by distillation. Resumable.

    Runs on `train_cfg`'s device and precision (default: those of the recipe `dist.setup` saw).
    Under torchrun (`dist`, by default the one `edgekit.host.dist.setup` made) it runs as DDP, every
    rank calling this with the same arguments, rank 0 alone logging and writing the checkpoint.
    The checkpoint (model, optimizer, history, written after every epoch) holds no world size: a
    run resumes with any number of processes. It is reused only when its `key` matches.
    Returns the per-epoch history: loss, val top-1, seconds. `model` (and `teacher`) end where
    they started (device and memory layout).
    """
    d = dist or current_dist()
    cfg = train_cfg or d.train or TrainConfig()
    device = d.device or resolve_device(cfg.device)
    if not d.is_writer:
        log = _quiet
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    dtype = autocast_dtype(cfg.precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    kd = teacher is not None and alpha > 0.0

    sampler = None
    if d.distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(data.train, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                     seed=seed * 100003, drop_last=True)
    generator = torch.Generator()
    # One loader for the whole stage, so persistent workers survive epochs; reseeded per epoch below.
    loader = data.train_loader(generator, sampler=sampler, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise EdgekitError("{}: the training set is smaller than one batch ({} images per process)".format(
            desc, data.batch_size))
    lr = opt_cfg.lr * (d.world_size if cfg.lr_scaling == "linear" else 1)
    opt = _optimizer(model, opt_cfg, lr)
    history: List[Dict[str, Any]] = []
    start_epoch = 0
    # Rank 0 reads it and hands it round: other nodes need not share its disk.
    state = d.on_writer(lambda: _read_checkpoint(checkpoint, key))
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        if start_epoch < epochs:
            log("{}: resuming after epoch {}/{} from {}".format(desc, start_epoch, epochs, checkpoint))
    del state
    sched = _scheduler(opt, opt_cfg, lr, epochs * steps_per_epoch, start_epoch * steps_per_epoch)

    model_home = next(model.parameters()).device
    _place(model, device, channels_last)
    step_model: nn.Module = model
    if d.distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    teacher_home = None
    teacher_fwd: Optional[nn.Module] = None
    if kd:
        assert teacher is not None
        teacher_home = next(teacher.parameters()).device
        teacher.eval()
        _place(teacher, device, channels_last)
        teacher_fwd = teacher
    if cfg.compile:
        step_model = torch.compile(step_model)  # type: ignore[assignment]
        if teacher_fwd is not None:
            teacher_fwd = torch.compile(teacher_fwd)  # type: ignore[assignment]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    label_smoothing = opt_cfg.label_smoothing
    val_loader = data.val_loader(shard=(d.rank, d.world_size) if d.distributed else None,
                                 pin_memory=device.type == "cuda")
    try:
        # With workers the loader runs beside the step, so it is timed alone first; without, it runs
        # inside the step's loop and the time spent waiting for batches measures it for free.
        loader_img_s = probe_loader(loader) if start_epoch < epochs and d.is_writer and data.workers > 0 else None
        for epoch in range(start_epoch, epochs):
            model.train()
            # The shuffle order depends only on (seed, epoch), so a resumed run sees the same batches.
            generator.manual_seed(seed * 100003 + epoch)
            augment_gen = generator
            if sampler is not None:
                sampler.set_epoch(epoch)
                augment_gen = torch.Generator().manual_seed(seed * 100003 + epoch + 1000003 * d.rank)
            started = time.perf_counter()
            # Summed on the device and read every log_every steps: no host sync per step.
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            first = epoch == start_epoch
            window_start, waited = None, 0.0
            batches = device_batches(loader, device, memory_format, data.batch_augment, augment_gen)
            bar = _progress(batches, steps_per_epoch, "{} {}/{}".format(desc, epoch + 1, epochs), d.is_writer)
            fetch_started = time.perf_counter()
            for step, (images, labels) in enumerate(bar, start=1):
                if window_start is not None:
                    waited += time.perf_counter() - fetch_started
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    logits = step_model(images)
                    if kd:
                        assert teacher_fwd is not None
                        with torch.inference_mode():
                            teacher_logits = teacher_fwd(images)
                        # An inference tensor cannot be saved for backward; its clone can.
                        loss = kd_loss(logits, teacher_logits.clone(), labels, alpha, temperature)
                    else:
                        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                if post_step is not None:
                    post_step(model)
                loss_sum += loss.detach()
                correct += (logits.detach().argmax(1) == labels).sum()
                seen += int(labels.shape[0])
                if step % cfg.log_every == 0 or step == steps_per_epoch:
                    mean = float(loss_sum) / step
                    if not math.isfinite(mean):
                        raise EdgekitError("{}: loss became {} at epoch {}; lower the learning rate".format(
                            desc, mean, epoch + 1))
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss="{:.3f}".format(mean), refresh=False)
                if first and d.is_writer:
                    # The throughput line: steps 3.. (cudnn autotuning and compilation are in 1-2),
                    # closed on a step whose loss read above synchronised the device.
                    if step == min(2, steps_per_epoch - 1):
                        window_start, window_steps, waited = time.perf_counter(), 0, 0.0
                    elif window_start is not None:
                        window_steps += 1
                        if (window_steps >= 10 and step % cfg.log_every == 0) or step == steps_per_epoch:
                            float(loss_sum)  # the sync that makes the clock honest
                            elapsed = time.perf_counter() - window_start
                            img_s = window_steps * data.batch_size / elapsed
                            if loader_img_s is None:
                                loader_img_s = window_steps * data.batch_size / max(waited, 1e-9)
                            step_img_s = window_steps * data.batch_size / max(elapsed - waited, 1e-9)
                            remaining = (epochs - epoch) * steps_per_epoch - step
                            log("{}: loader {:,.0f} img/s, step {:,.0f} img/s, together {:,.0f} img/s per process"
                                "{} ({}-bound); ETA {} for {} epoch(s)".format(
                                    desc, loader_img_s, step_img_s, img_s,
                                    " x {} processes".format(d.world_size) if d.world_size > 1 else "",
                                    "loader" if loader_img_s < step_img_s else "step",
                                    _format_eta(remaining * elapsed / window_steps), epochs - start_epoch))
                            window_start = None
                fetch_started = time.perf_counter()
            # Every rank has summed its shard; the mean over all ranks' batches is the epoch's loss.
            totals = torch.stack([loss_sum.float(), torch.tensor(float(step), device=device)])
            d.all_reduce_sum(totals)
            mean_loss = float(totals[0] / totals[1])
            if not math.isfinite(mean_loss):
                raise EdgekitError("{}: loss became {} at epoch {}; lower the learning rate".format(
                    desc, mean_loss, epoch + 1))
            d.sync_buffers(model)  # every rank scores the model rank 0 checkpoints
            hits, total = evaluate_counts(model, val_loader, device, memory_format)
            counts = d.all_reduce_sum(torch.tensor([hits, total], dtype=torch.float64, device=device))
            if float(counts[1]) == 0:
                raise EdgekitError("the validation split is empty")
            top1 = 100.0 * float(counts[0]) / float(counts[1])
            seconds = time.perf_counter() - started
            history.append({"epoch": epoch + 1, "loss": round(mean_loss, 5),
                            "val_top1": round(top1, 3), "seconds": round(seconds, 2)})
            # Saved before the epoch is announced: what the log calls finished is on disk.
            if d.is_writer:
                with atomic_path(checkpoint) as tmp:
                    torch.save({"key": key, "epoch": epoch, "steps_per_epoch": steps_per_epoch,
                                "world_size": d.world_size,
                                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                "optimizer": opt.state_dict(), "history": history}, tmp)
            log("{} epoch {}/{}: loss {:.4f}, val top-1 {:.2f}%, {:.1f} s".format(
                desc, epoch + 1, epochs, mean_loss, top1, seconds))
    finally:
        _restore(model, model_home)
        if teacher is not None and teacher_home is not None:
            _restore(teacher, teacher_home)
    return history


def distill(student: nn.Module, teacher: nn.Module, data: DataBundle, epochs: int, opt_cfg: OptimizerConfig,
            alpha: float, temperature: float, *, checkpoint: str, key: str, seed: int, desc: str = "distill",
            post_step: Optional[Callable[[nn.Module], None]] = None,
            log: Callable[[str], None] = print, train_cfg: Optional[TrainConfig] = None,
            dist: Optional[Dist] = None) -> List[Dict[str, Any]]:
    """Train `student` from `teacher` with the KD loss above; resumable through `checkpoint`."""
    return train(student, data, epochs, opt_cfg, checkpoint=checkpoint, key=key, seed=seed, desc=desc,
                 teacher=teacher, alpha=alpha, temperature=temperature, post_step=post_step, log=log,
                 train_cfg=train_cfg, dist=dist)
