"""Data sets: the embedded `digits` default and torchvision-layout `imagefolder` folders.

`digits` is the 1,797 8×8 handwritten digits that scikit-learn ships (no download), upscaled to
`image_size`, three channels, split into train/val by a fixed seed, stratified by class.
`imagefolder` reads `<root>/train/<class>/*` and `<root>/val/<class>/*` with ImageNet
normalization, the layout torchvision's ImageFolder expects.
"""

import os
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import EdgekitError
from ..recipe import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def train_loader(self, generator: torch.Generator) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.workers, generator=generator)

    def val_loader(self, batch_size: Optional[int] = None) -> DataLoader:
        return DataLoader(self.val, batch_size=batch_size or self.batch_size * 2, shuffle=False,
                          num_workers=self.workers)

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
    images = digits.images.astype(np.float32) / 16.0  # 8×8, values 0..16
    labels = digits.target.astype(np.int64)
    train_idx, val_idx = _stratified_split(labels, cfg.val_fraction, seed)
    tensor = torch.from_numpy(images)[:, None]
    tensor = F.interpolate(tensor, size=(cfg.image_size, cfg.image_size), mode="bilinear",
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
        batch_augment=random_translate(max(1, cfg.image_size // 16), background))


# --------------------------------------------------------------------------- imagefolder

def _safe_image_loader(path: str):  # noqa: ANN202 (PIL type only when torchvision is used)
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise EdgekitError("cannot read image {}: {}".format(path, exc)) from None


def _image_folder(path: str, transform: Callable, split: str) -> Dataset:
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise EdgekitError("image folder {} has no {}/ folder (expected <root>/{}/<class>/<image>)".format(
            os.path.dirname(path), split, split))
    if not os.access(path, os.R_OK | os.X_OK):
        raise EdgekitError("image folder {} is not readable (permissions)".format(path))
    try:
        return ImageFolder(path, transform=transform, loader=_safe_image_loader)
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
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size),
                                 transforms.ToTensor(), normalize])
    train = _image_folder(os.path.join(cfg.root, "train"), train_tf, "train")
    val = _image_folder(os.path.join(cfg.root, "val"), val_tf, "val")
    if train.classes != val.classes:  # type: ignore[attr-defined]
        raise EdgekitError("train/ and val/ under {} have different class folders ({} vs {})".format(
            cfg.root, len(train.classes), len(val.classes)))  # type: ignore[attr-defined]
    classes = list(train.classes)  # type: ignore[attr-defined]
    calibration = _image_folder(os.path.join(cfg.root, "train"), val_tf, "train")
    return DataBundle(train=_cap(train, cfg.max_train_samples, seed), val=_cap(val, cfg.max_val_samples, seed),
                      num_classes=len(classes), class_names=classes, image_size=size,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size=cfg.batch_size, workers=cfg.workers,
                      calibration_set=_cap(calibration, cfg.max_train_samples, seed))


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    if cfg.dataset == "digits":
        return load_digits_bundle(cfg, seed)
    return load_imagefolder_bundle(cfg, seed)


def evaluate_top1(model: torch.nn.Module, loader: Sequence) -> float:
    """Top-1 accuracy in percent over a loader of (images, labels)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
            total += int(labels.numel())
    if total == 0:
        raise EdgekitError("the validation split is empty")
    return 100.0 * correct / total
