"""Data sets: the embedded `digits` default and torchvision-layout `imagefolder` folders.

`digits` is the 1,797 8×8 handwritten digits that scikit-learn ships (no download), upscaled to
`image_size`, three channels, split into train/val by a fixed seed, stratified by class.
`imagefolder` reads `<root>/train/<class>/*` and `<root>/val/<class>/*` with ImageNet
normalization, the layout torchvision's ImageFolder expects.
"""

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from .. import summary
from ..errors import EdgekitError
from ..recipe import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The val (and eval.npz) preprocessing: the transforms below and the hand-off contract both read these.
VAL_RESIZE_RATIO = 256 / 224     # shorter side to size * 256/224, then a center crop of size
VAL_INTERPOLATION = "bilinear"   # torchvision's InterpolationMode value, F.interpolate's mode
IMAGE_PIXEL_SCALE = 255.0        # ToTensor: 8-bit RGB to 0..1
DIGITS_PIXEL_SCALE = 16.0        # scikit-learn's digits are intensities 0..16


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    class_names: List[str]
    image_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    batch_size: int
    workers: int = 0
    # Applied to each training batch (on tensors): cheap augmentation that keeps teacher and
    # student seeing the same augmented images during distillation.
    batch_augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None
    # Training images as evaluation sees them (no random crops or flips), for INT8 calibration.
    calibration_set: Optional[Dataset] = None
    # What an application must do to an image before the model sees it (edgekit.summary.preprocessing).
    preprocessing: Optional[dict] = None

    prefetch_factor: int = 4

    def _worker_args(self, pin_memory: bool) -> dict:
        args = {"num_workers": self.workers, "pin_memory": pin_memory}
        if self.workers > 0:
            # Workers live as long as the loader (one per stage), each keeping batches in flight.
            args.update(persistent_workers=True, prefetch_factor=self.prefetch_factor)
        return args

    def train_loader(self, generator: torch.Generator, sampler: Optional[Sampler] = None,
                     pin_memory: bool = False) -> DataLoader:
        """Shuffled by `generator` (reseed it per epoch), or by `sampler` (a DistributedSampler)."""
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=sampler is None, sampler=sampler,
                          drop_last=True, generator=generator, **self._worker_args(pin_memory))

    def val_loader(self, batch_size: Optional[int] = None, shard: Optional[Tuple[int, int]] = None,
                   pin_memory: bool = False) -> DataLoader:
        """The val split in order; `shard=(rank, world_size)` takes every world_size-th image from
        rank, so the shards of all ranks are the split exactly (no padding, unlike DistributedSampler)."""
        dataset = self.val
        if shard is not None and shard[1] > 1:
            dataset = Subset(dataset, range(shard[0], len(dataset), shard[1]))  # type: ignore[arg-type]
        return DataLoader(dataset, batch_size=batch_size or self.batch_size * 2, shuffle=False,
                          **self._worker_args(pin_memory))

    def calibration_batches(self, samples: int, batch_size: int = 32, seed: int = 0) -> Iterator[torch.Tensor]:
        """Batches of up to `samples` real training images, a fixed random subset (for INT8)."""
        yield from calibration_batches(self.calibration_set or self.train, samples, batch_size, seed)


def calibration_batches(dataset: Dataset, samples: int, batch_size: int = 32,
                        seed: int = 0) -> Iterator[torch.Tensor]:
    """A fixed random subset of `dataset` (images only), batched; deterministic for a seed."""
    if samples < 1:
        raise EdgekitError("calibration needs at least one sample, got {}".format(samples))
    n = len(dataset)  # type: ignore[arg-type]
    order = np.random.RandomState(seed).permutation(n)[:min(samples, n)]
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False)
    for images, _ in loader:
        yield images


# --------------------------------------------------------------------------- digits

def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    return np.sort(np.array(train_idx)), np.sort(np.array(val_idx))


def _cap(dataset: Dataset, limit: Optional[int], seed: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    order = np.sort(np.random.RandomState(seed + 1).permutation(n)[:limit])
    return Subset(dataset, order.tolist())


def random_translate(max_shift: int, fill: float) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Shift each image of a batch by up to `max_shift` pixels, filling with the background."""
    def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if max_shift <= 0:
            return images
        n, _, h, w = images.shape
        padded = F.pad(images, (max_shift,) * 4, value=fill)
        shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
        out = torch.empty_like(images)
        for i in range(n):
            dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
            out[i] = padded[i, :, dy:dy + h, dx:dx + w]
        return out
    return augment


def load_digits_bundle(cfg: DataConfig, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / DIGITS_PIXEL_SCALE  # 8×8, values 0..16
    labels = digits.target.astype(np.int64)
    train_idx, val_idx = _stratified_split(labels, cfg.val_fraction, seed)
    tensor = torch.from_numpy(images)[:, None]
    tensor = F.interpolate(tensor, size=(cfg.image_size, cfg.image_size), mode=VAL_INTERPOLATION,
                           align_corners=False).clamp_(0.0, 1.0)
    mean = float(tensor[train_idx].mean())
    std = float(tensor[train_idx].std())
    tensor = ((tensor - mean) / std).repeat(1, 3, 1, 1).contiguous()
    targets = torch.from_numpy(labels)
    train = TensorDataset(tensor[train_idx], targets[train_idx])
    val = TensorDataset(tensor[val_idx], targets[val_idx])
    background = (0.0 - mean) / std
    return DataBundle(
        train=_cap(train, cfg.max_train_samples, seed), val=_cap(val, cfg.max_val_samples, seed),
        num_classes=10, class_names=[str(i) for i in range(10)], image_size=cfg.image_size,
        mean=(mean,) * 3, std=(std,) * 3, batch_size=cfg.batch_size, workers=0,
        batch_augment=random_translate(max(1, cfg.image_size // 16), background),
        preprocessing=summary.preprocessing(
            {"size": [cfg.image_size, cfg.image_size], "interpolation": VAL_INTERPOLATION, "align_corners": False},
            None, (mean,) * 3, (std,) * 3, "GRAY", [str(i) for i in range(10)], pixel_scale=DIGITS_PIXEL_SCALE))


# --------------------------------------------------------------------------- imagefolder

def _safe_image_loader(path: str):  # noqa: ANN202 (PIL type only when torchvision is used)
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise EdgekitError("cannot read image {}: {}".format(path, exc)) from None


def _lazy_image_loader(path: str):  # noqa: ANN202
    """The opened file, header read, pixels not yet decoded: the transform decides at what scale."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise EdgekitError("cannot read image {}: {}".format(path, exc)) from None


def _decode_at_least(image, width: int, height: int):  # noqa: ANN001, ANN202
    """Decode `image` as RGB at the smallest JPEG DCT scale (1, 1/2, 1/4, 1/8) that keeps it at
    least width x height (PIL's draft mode: libjpeg skips the work for the dropped resolution)."""
    try:
        if getattr(image, "format", None) == "JPEG":
            image.draft("RGB", (width, height))
        return image.convert("RGB")
    except OSError as exc:
        raise EdgekitError("cannot read image {}: {}".format(getattr(image, "filename", "?"), exc)) from None


def _tensor_image_loader(path: str) -> torch.Tensor:
    """uint8 CHW RGB through torchvision.io (libjpeg-turbo straight into a tensor); PIL for what it
    cannot decode."""
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.functional import pil_to_tensor

    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError:
        return pil_to_tensor(_safe_image_loader(path))


def tensor_train_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """RandomResizedCrop + flip on the uint8 tensor (torchvision v2's vectorised antialiased resize),
    then float and normalisation: the same augmentation as the PIL pipeline, without PIL's slow
    resize and ToTensor."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


class DraftRandomResizedCrop:
    """torchvision's RandomResizedCrop (same crop distribution), for a lazily opened image: the
    crop is drawn from the header's size first, the JPEG is then decoded at the smallest scale that
    still gives the crop `size` pixels a side, and the crop is resized straight from that (one
    antialiased bilinear resize, as torchvision's). Big photos decode at 1/2..1/8 of the work."""

    def __init__(self, size: int, scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio

    def __call__(self, image):  # noqa: ANN001, ANN204
        from PIL import Image
        from torchvision import transforms

        full_w, full_h = image.size
        top, left, h, w = transforms.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        image = _decode_at_least(image, -(-full_w * self.size // w), -(-full_h * self.size // h))
        fx, fy = image.size[0] / float(full_w), image.size[1] / float(full_h)
        box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
        return image.resize((self.size, self.size), Image.BILINEAR, box=box)


def _image_folder(path: str, transform: Callable, split: str,
                  loader: Callable = _safe_image_loader) -> Dataset:
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise EdgekitError("image folder {} has no {}/ folder (expected <root>/{}/<class>/<image>)".format(
            os.path.dirname(path), split, split))
    if not os.access(path, os.R_OK | os.X_OK):
        raise EdgekitError("image folder {} is not readable (permissions)".format(path))
    try:
        return ImageFolder(path, transform=transform, loader=loader)
    except (FileNotFoundError, PermissionError) as exc:
        raise EdgekitError("image folder {}: {} (expected <class>/<image> files inside)".format(
            path, str(exc).splitlines()[0].rstrip("."))) from None


def load_imagefolder_bundle(cfg: DataConfig, seed: int) -> DataBundle:
    from torchvision import transforms

    if cfg.root is None:
        raise EdgekitError("data.root is required for dataset imagefolder")
    if not os.path.isdir(cfg.root):
        raise EdgekitError("image folder root {} does not exist or is not a folder".format(cfg.root))
    size = cfg.image_size
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    # Measured here (2 loader workers, 224x224 crops): from 500x375 JPEGs full 1,000 img/s, draft
    # 960, tensor 1,345; from 1600x1200 photos 119, 217, 223. Tensor is never slower, so it is the
    # default (benchmarks/train_throughput.py --folder --decode measures yours).
    if cfg.decode == "tensor":
        train_loader: Callable = _tensor_image_loader
        train_tf = tensor_train_transform(size, IMAGENET_MEAN, IMAGENET_STD)
    else:
        if cfg.decode == "draft":
            train_loader, crop = _lazy_image_loader, DraftRandomResizedCrop(size)
        else:
            train_loader, crop = _safe_image_loader, transforms.RandomResizedCrop(size)
        train_tf = transforms.Compose([crop, transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    shorter_side = int(round(size * VAL_RESIZE_RATIO))
    val_tf = transforms.Compose([transforms.Resize(shorter_side, interpolation=transforms.InterpolationMode(
        VAL_INTERPOLATION)), transforms.CenterCrop(size), transforms.ToTensor(), normalize])
    # Validation (and calibration) keep torchvision's exact full-resolution preprocessing: the
    # accuracy a checkpoint is known by, and the images the device scores engines on.
    train = _image_folder(os.path.join(cfg.root, "train"), train_tf, "train", train_loader)
    val = _image_folder(os.path.join(cfg.root, "val"), val_tf, "val")
    if train.classes != val.classes:  # type: ignore[attr-defined]
        raise EdgekitError("train/ and val/ under {} have different class folders ({} vs {})".format(
            cfg.root, len(train.classes), len(val.classes)))  # type: ignore[attr-defined]
    classes = list(train.classes)  # type: ignore[attr-defined]
    calibration = _image_folder(os.path.join(cfg.root, "train"), val_tf, "train")
    return DataBundle(train=_cap(train, cfg.max_train_samples, seed), val=_cap(val, cfg.max_val_samples, seed),
                      num_classes=len(classes), class_names=classes, image_size=size,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size=cfg.batch_size, workers=cfg.workers,
                      prefetch_factor=cfg.prefetch_factor,
                      calibration_set=_cap(calibration, cfg.max_train_samples, seed),
                      preprocessing=summary.preprocessing(
                          {"shorter_side": shorter_side, "interpolation": VAL_INTERPOLATION, "antialias": True},
                          {"mode": "center", "size": [size, size]}, IMAGENET_MEAN, IMAGENET_STD, "RGB", classes,
                          pixel_scale=IMAGE_PIXEL_SCALE))


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    if cfg.dataset == "digits":
        return load_digits_bundle(cfg, seed)
    return load_imagefolder_bundle(cfg, seed)


def evaluate_counts(model: torch.nn.Module, loader: Iterable, device: Optional[torch.device] = None,
                    memory_format: torch.memory_format = torch.contiguous_format) -> Tuple[int, int]:
    """(correct, total) top-1 over a loader of (images, labels), in fp32 on `device` (default: where
    the model is, which must be there already). One host sync, at the end."""
    model.eval()
    device = device or next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with torch.inference_mode():
        for images, labels in loader:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            correct += (model(images).argmax(1) == labels).sum()
            total += int(labels.numel())
    return int(correct), total


def predict(model: torch.nn.Module, loader: Iterable,
            device: Optional[torch.device] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(FP32 logits, labels) of everything a loader of (images, labels) yields, as CPU arrays, computed on
    the device `edgekit.host.dist.setup` chose (or `device`); the model comes back where it was. One pass:
    top-1, agreement and reference logits all come from it."""
    from .dist import current

    home = next(model.parameters()).device
    device = device or current().device or home
    model.eval()
    model.to(device)
    try:
        chunks, labels = [], []
        with torch.inference_mode():
            for images, batch_labels in loader:
                chunks.append(model(images.to(device, non_blocking=True)).float().cpu())
                labels.append(batch_labels)
    finally:
        model.to(home)
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    return torch.cat(chunks).numpy(), torch.cat(labels).numpy()



def evaluate_top1(model: torch.nn.Module, loader: Iterable, device: Optional[torch.device] = None) -> float:
    """Top-1 accuracy in percent over a loader of (images, labels); on `device` when given, else on
    the device `edgekit.host.dist.setup` chose, else where the model is (the model goes there and
    comes back)."""
    from .dist import current

    home = next(model.parameters()).device
    device = device or current().device
    if device is not None and device != home:
        model.to(device)
    try:
        correct, total = evaluate_counts(model, loader, device)
    finally:
        if device is not None and device != home:
            model.to(home)
    if total == 0:
        raise EdgekitError("the validation split is empty")
    return 100.0 * correct / total
