"""Training throughput: a bare PyTorch step against edgekit's own loop, the loader alone, a recipe's ETA.

    .venv/bin/python benchmarks/train_throughput.py --device cpu                 # small: ~1-2 min on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --device cuda --image-size 224 --batch-size 256 \\
        --precision bf16 --folder /data/imagenet --workers 15 --recipe imagenet

Two steps are measured, each as a bare PyTorch step (batch resident on the device, nothing else)
and through `edgekit.host.compress.distill.train` (the real loop: sampler, host->device copies,
autocast, scheduler, on-device metrics, logging):
  ce: a dense ResNet-50, cross-entropy;
  kd: a student pruned by edgekit to `--kd-ratio` of the teacher's MACs, distilled from the dense
      teacher (the teacher's forward under inference_mode in the same autocast).
edgekit's img/s is the slope between a short and a long run of `train` (same set-up, evaluation and
checkpoint in both), so its fixed costs cancel and what remains is the per-step cost.
The loader alone: the ImageFolder loader of `--folder` (edgekit's, with `--workers`), or the
in-memory synthetic source. The last line printed is one JSON object.

`--precision` is resolved as a stage resolves `train.precision` (bf16 on a CPU without native bf16
runs fp32); `--exact-precision` times the autocast asked for instead. `--only ce` times one step kind:

    .venv/bin/python benchmarks/train_throughput.py --device cpu --image-size 64 --batch-size 8 \
        --classes 1000 --only ce --steps 3 --warmup 1 --repeats 1 --precision bf16 [--exact-precision]
"""

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from edgekit.host.arch.resnet import RESNET50  # noqa: E402
from edgekit.host.compress.distill import autocast_dtype, kd_loss, probe_loader, train  # noqa: E402
from edgekit.host.compress.prune import prune  # noqa: E402
from edgekit.host.data import DataBundle, load_data  # noqa: E402
from edgekit.host.dist import resolve_device  # noqa: E402
from edgekit.host.models import count_macs_params, resnet50  # noqa: E402
from edgekit.host.train import for_stage  # noqa: E402
from edgekit.recipe import DataConfig, OptimizerConfig, TrainConfig, load_recipe  # noqa: E402

IMAGENET_TRAIN = 1281167


class _Batches(Dataset):
    """`count` copies of one pinned batch, served whole (batch_size=None): a loader that costs
    nothing, so the loop's own overhead is what shows."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, count: int) -> None:
        self.images, self.labels, self.count = images, labels, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Any:
        return self.images, self.labels


class SyntheticBundle(DataBundle):
    steps: int = 1

    def train_loader(self, generator: torch.Generator, sampler: Any = None, pin_memory: bool = False) -> DataLoader:
        images, labels = self.train.tensors  # type: ignore[attr-defined]
        return DataLoader(_Batches(images, labels, self.steps), batch_size=None, shuffle=False)

    def val_loader(self, batch_size: Optional[int] = None, shard: Any = None, pin_memory: bool = False) -> DataLoader:
        images, labels = self.train.tensors  # type: ignore[attr-defined]
        return DataLoader(_Batches(images, labels, 1), batch_size=None, shuffle=False)


def synthetic(batch: int, size: int, classes: int, pin: bool) -> SyntheticBundle:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (batch,), generator=g)
    if pin:
        images, labels = images.pin_memory(), labels.pin_memory()
    return SyntheticBundle(train=torch.utils.data.TensorDataset(images, labels), val=None, num_classes=classes,
                           class_names=[str(i) for i in range(classes)], image_size=size, mean=(0.0,) * 3,
                           std=(1.0,) * 3, batch_size=batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step(model: torch.nn.Module, teacher: Optional[torch.nn.Module], data: SyntheticBundle,
              device: torch.device, cfg: TrainConfig, opt_cfg: OptimizerConfig, warmup: int, steps: int) -> float:
    """img/s of the textbook step on a batch already on the device."""
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(device).to(memory_format=fmt).train()
    if teacher is not None:
        teacher = copy.deepcopy(teacher).to(device).to(memory_format=fmt).eval()
    images, labels = data.train.tensors  # type: ignore[attr-defined]
    images = images.to(device, memory_format=fmt)
    labels = labels.to(device)
    # The same update as the recipe's (Nesterov, no decay on BatchNorm and biases): the optimizer's
    # math is the recipe's choice, not the loop's overhead.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": opt_cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=opt_cfg.lr,
                          momentum=opt_cfg.momentum, nesterov=opt_cfg.nesterov)
    dtype = autocast_dtype(cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    step_model, teacher_fwd = model, teacher
    if cfg.compile:
        step_model = torch.compile(model)
        teacher_fwd = torch.compile(teacher) if teacher is not None else None

    def one() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = step_model(images)
            if teacher_fwd is not None:
                with torch.inference_mode():
                    t = teacher_fwd(images)
                loss = kd_loss(logits, t.clone(), labels, 0.7, 4.0)
            else:
                loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        one()
    _sync(device)
    stamps = [time.perf_counter()]
    for _ in range(steps):
        one()
        if device.type == "cpu":
            stamps.append(time.perf_counter())
    _sync(device)
    stamps.append(time.perf_counter())
    return _rate(stamps, steps, data.batch_size, device)


def _rate(stamps: List[float], steps: int, batch: int, device: torch.device) -> float:
    """On CUDA, the window over `steps` (synchronised at both ends); on the CPU, where each step is
    synchronous, the median step, which a shared machine's bursts of load do not move."""
    if device.type == "cpu":
        return batch / statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    return steps * batch / (stamps[-1] - stamps[0])


def edgekit_loop(model: torch.nn.Module, teacher: Optional[torch.nn.Module], data: SyntheticBundle,
                 device: torch.device, cfg: TrainConfig, opt_cfg: OptimizerConfig, warmup: int, steps: int) -> float:
    """img/s of edgekit's train() over its steps warmup+1 .. warmup+steps: timed at the ends of
    those steps (post_step hook, the device synchronised there only, as the bare step is)."""
    count = {"n": 0}
    stamps: List[float] = []

    def mark(_model: torch.nn.Module) -> None:
        count["n"] += 1
        n = count["n"]
        if n in (warmup, warmup + steps) or (device.type == "cpu" and warmup < n < warmup + steps):
            _sync(device)
            stamps.append(time.perf_counter())

    data.steps = warmup + steps
    with tempfile.TemporaryDirectory() as tmp:
        train(copy.deepcopy(model), data, 1, opt_cfg, checkpoint=os.path.join(tmp, "c.pt"), key="k", seed=0,
              desc="bench", teacher=teacher, alpha=0.7 if teacher is not None else 0.0, temperature=4.0,
              post_step=mark, log=lambda m: None, train_cfg=cfg)
    return _rate(stamps, steps, data.batch_size, device)


def compare(model: torch.nn.Module, teacher: Optional[torch.nn.Module], data: SyntheticBundle,
            device: torch.device, cfg: TrainConfig, opt_cfg: OptimizerConfig, warmup: int, steps: int,
            repeats: int) -> Dict[str, float]:
    """Best of `repeats` interleaved trials each: a shared machine's noise hits both alike."""
    bare, ours = 0.0, 0.0
    for _ in range(repeats):
        bare = max(bare, bare_step(model, teacher, data, device, cfg, opt_cfg, warmup, steps))
        ours = max(ours, edgekit_loop(model, teacher, data, device, cfg, opt_cfg, warmup, steps))
    return {"bare_img_s": round(bare, 2), "edgekit_img_s": round(ours, 2), "ratio": round(ours / bare, 3),
            "bare_step_s": round(data.batch_size / bare, 3), "edgekit_step_s": round(data.batch_size / ours, 3)}


def loader_throughput(args: argparse.Namespace, data: SyntheticBundle) -> Dict[str, Any]:
    if not args.folder:
        data.steps = 50
        loader = data.train_loader(torch.Generator())
        return {"loader": "synthetic (in memory)", "loader_img_s": round(probe_loader(loader, 40, 5.0), 1)}
    cfg = DataConfig(dataset="imagefolder", root=args.folder, image_size=args.image_size, batch_size=args.batch_size,
                     workers=args.workers, decode=args.decode)
    bundle = load_data(cfg, seed=0)
    loader = bundle.train_loader(torch.Generator().manual_seed(0), pin_memory=torch.cuda.is_available())
    batches = max(4, min(len(loader) - 1, args.loader_batches))
    img_s = probe_loader(loader, batches, args.loader_seconds)
    return {"loader": "imagefolder {} ({} workers, decode {})".format(args.folder, args.workers, args.decode),
            "loader_img_s": round(img_s, 1)}


def recipe_eta(name: str, ce: float, kd: float, loader: float, measured_size: int, world_size: int,
               train_images: Optional[int]) -> Dict[str, Any]:
    """Seconds of training the recipe needs at these rates (per process x world_size), evaluation excluded."""
    recipe = load_recipe(name)
    if train_images is None:
        if recipe.data.dataset == "digits":
            train_images = int(round(1797 * (1 - recipe.data.val_fraction)))
        elif recipe.data.root and os.path.isdir(os.path.join(recipe.data.root, "train")):
            train_images = sum(len(files) for _, _, files in os.walk(os.path.join(recipe.data.root, "train")))
        else:
            train_images = IMAGENET_TRAIN
    if recipe.data.max_train_samples:
        train_images = min(train_images, recipe.data.max_train_samples)
    # Convolution cost grows with the pixel count: rescale from the measured size.
    scale = (measured_size / float(recipe.data.image_size)) ** 2
    from_checkpoint = bool(recipe.model.checkpoint)  # a checkpoint whose head fits the data is used as it is
    teacher_epochs = recipe.teacher.epochs_for(from_checkpoint) if recipe.teacher.trains(from_checkpoint, False) else 0
    kd_epochs = recipe.prune.rounds * recipe.distill.epochs_per_round + recipe.distill.final_epochs
    ce_rate = min(ce * scale, loader) * world_size
    kd_rate = min(kd * scale, loader) * world_size
    seconds = teacher_epochs * train_images / ce_rate + kd_epochs * train_images / kd_rate
    return {"recipe": name, "train_images": train_images, "teacher_epochs": teacher_epochs,
            "distill_epochs": kd_epochs, "world_size": world_size, "image_size": recipe.data.image_size,
            "bound": "loader" if loader < min(ce, kd) * scale else "step", "seconds": round(seconds, 1),
            "hours": round(seconds / 3600.0, 3)}


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default=None, choices=["bf16", "fp16", "fp32"],
                   help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--exact-precision", action="store_true",
                   help="time --precision as given, not as a stage resolves it for this device")
    p.add_argument("--image-size", type=int, default=None, help="default: 224 on CUDA, 16 on the CPU")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 16 on the CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 50 on CUDA, 8 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 15 on CUDA, 2 on the CPU)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved trials, best kept (default 2 / 3 on CPU)")
    p.add_argument("--only", choices=["ce", "kd"], help="time this step alone (no loader, no ETA)")
    p.add_argument("--kd-ratio", type=float, default=0.5, help="student MACs / teacher MACs for the KD step")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--channels-last", default=None, action=argparse.BooleanOptionalAction)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--folder", help="an ImageFolder root (train/<class>/*) for the loader measurement")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--decode", default="tensor", choices=["tensor", "draft", "full"])
    p.add_argument("--loader-batches", type=int, default=30)
    p.add_argument("--loader-seconds", type=float, default=20.0)
    p.add_argument("--recipe", default="imagenet", help="recipe whose ETA to compute from these rates")
    p.add_argument("--world-size", type=int, default=1, help="processes the ETA assumes (each at these rates)")
    p.add_argument("--train-images", type=int, default=None, help="training set size for the ETA")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def _defaults(args: argparse.Namespace, cuda: bool) -> None:
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.image_size = args.image_size or (224 if cuda else 16)
    args.batch_size = args.batch_size or (256 if cuda else 16)
    args.steps = args.steps or (50 if cuda else 8)
    args.warmup = args.warmup or (15 if cuda else 2)
    args.repeats = args.repeats or (2 if cuda else 3)


def _train_config(args: argparse.Namespace, device: torch.device) -> TrainConfig:
    """The TrainConfig timed: --precision resolved for this device as a stage resolves it, unless --exact-precision."""
    cfg = TrainConfig(device=device.type, precision=args.precision, channels_last=args.channels_last,
                      compile=args.compile, log_every=max(args.steps, 50))
    if not args.exact_precision:
        cfg, placement = for_stage(cfg)
        print(placement.line(), flush=True)
    return cfg


def _steps(args: argparse.Namespace, result: Dict[str, Any], data: SyntheticBundle, device: torch.device,
           cfg: TrainConfig) -> None:
    opt_cfg = OptimizerConfig(name="sgd", lr=0.01, schedule="cosine", weight_decay=1e-4)
    timing = (args.warmup, args.steps, args.repeats)
    torch.manual_seed(0)
    teacher = resnet50(num_classes=args.classes)
    if args.only in (None, "ce"):
        result["ce"] = compare(teacher, None, data, device, cfg, opt_cfg, *timing)
        print("ce: bare {bare_img_s:,.2f} img/s ({bare_step_s:.3f} s a step), edgekit {edgekit_img_s:,.2f} img/s "
              "({edgekit_step_s:.3f} s a step, {ratio:.1%})".format(**result["ce"]), flush=True)
    if args.only in (None, "kd"):
        teacher_macs, _ = count_macs_params(teacher, args.image_size)
        pruned = prune(teacher, int(args.kd_ratio * teacher_macs), args.image_size, RESNET50, method="l1",
                       log=lambda m: None)
        result["kd"] = compare(pruned.model, teacher, data, device, cfg, opt_cfg, *timing)
        result["kd"]["student_macs_ratio"] = round(pruned.macs_after / float(teacher_macs), 4)
        print("kd ({student_macs_ratio:.2f}x-MACs student + dense teacher): bare {bare_img_s:,.2f} img/s, "
              "edgekit {edgekit_img_s:,.2f} img/s ({ratio:.1%})".format(**result["kd"]), flush=True)


def _eta(args: argparse.Namespace, result: Dict[str, Any]) -> None:
    result["eta"] = eta = recipe_eta(args.recipe, result["ce"]["edgekit_img_s"], result["kd"]["edgekit_img_s"],
                                     result["loader_img_s"], args.image_size, args.world_size, args.train_images)
    measured_here = eta["image_size"] == args.image_size
    print("ETA of recipe {}: {:.2f} h of training on {} process(es), {}-bound{}".format(
        args.recipe, eta["hours"], args.world_size, eta["bound"], "" if measured_here else
        " (extrapolated from {0}x{0} to {1}x{1} by pixel count, which overstates it for small images on a "
        "CPU; --image-size {1} --batch-size <the recipe's> measures it)".format(args.image_size, eta["image_size"])),
        flush=True)
    eta["extrapolated_from_image_size"] = None if measured_here else args.image_size


def main(argv: Optional[list] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    _defaults(args, cuda)
    if args.threads:
        torch.set_num_threads(args.threads)
    requested = args.precision
    cfg = _train_config(args, device)
    data = synthetic(args.batch_size, args.image_size, args.classes, pin=cuda)
    print("device {} ({}), {}, {}x{}, batch {}, {} timed steps after {}".format(
        device, torch.cuda.get_device_name(device) if cuda else "cpu, {} threads".format(torch.get_num_threads()),
        cfg.precision, args.image_size, args.image_size, args.batch_size, args.steps, args.warmup), flush=True)
    result: Dict[str, Any] = {"device": str(device), "precision": cfg.precision, "requested_precision": requested,
                              "image_size": args.image_size, "batch_size": args.batch_size,
                              "channels_last": args.channels_last, "compile": args.compile, "torch": torch.__version__}
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(device)
    else:
        result["threads"] = torch.get_num_threads()
    _steps(args, result, data, device, cfg)
    if args.only is None:
        result.update(loader_throughput(args, data))
        print("loader alone: {:,.1f} img/s ({})".format(result["loader_img_s"], result["loader"]), flush=True)
        if args.recipe:
            _eta(args, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
