"""ImageFolder input: the three decode paths give the same kind of batches; workers persist."""

import numpy as np
import pytest
import torch
from PIL import Image

from edgekit.host.data import DraftRandomResizedCrop, _lazy_image_loader, load_data
from edgekit.recipe import DataConfig


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.RandomState(0)
    for split, n in (("train", 8), ("val", 4)):
        for i in range(n):
            d = root / split / "c{}".format(i % 2)
            d.mkdir(parents=True, exist_ok=True)
            pixels = (rng.rand(90, 120, 3) * 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if i == 3:
                image.convert("L").save(str(d / "{}.jpg".format(i)))   # grayscale JPEG
            elif i == 5:
                image.save(str(d / "{}.png".format(i)))                # not a JPEG
            else:
                image.save(str(d / "{}.jpg".format(i)), quality=90)
    return str(root)


@pytest.mark.parametrize("decode", ["tensor", "draft", "full"])
def test_decode_paths_give_normalised_batches(folder, decode):
    data = load_data(DataConfig(dataset="imagefolder", root=folder, image_size=32, batch_size=4,
                                decode=decode), seed=0)
    images, labels = next(iter(data.train_loader(torch.Generator().manual_seed(0))))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (4,)
    # uniform noise (mean 0.5) after ImageNet normalisation: about (0.5 - 0.449) / 0.226 = 0.22
    assert abs(float(images.mean()) - 0.22) < 0.15 and float(images.std()) > 0.05
    val, _ = next(iter(data.val_loader()))
    assert val.shape[1:] == (3, 32, 32)


def test_draft_crop_decodes_big_jpegs_at_a_reduced_scale(tmp_path):
    path = str(tmp_path / "big.jpg")
    Image.fromarray((np.random.RandomState(1).rand(800, 1200, 3) * 255).astype(np.uint8)).save(path)
    opened = _lazy_image_loader(path)
    torch.manual_seed(0)
    out = DraftRandomResizedCrop(64, scale=(1.0, 1.0), ratio=(1.5, 1.5))(opened)
    assert out.size == (64, 64) and out.mode == "RGB"
    # a whole-image crop to 64 px needs only 1/8 of the 1200x800 pixels: libjpeg decoded 150x100
    assert opened.size == (150, 100)


def test_workers_persist_and_prefetch(folder):
    data = load_data(DataConfig(dataset="imagefolder", root=folder, image_size=32, batch_size=4, workers=2,
                                prefetch_factor=2), seed=0)
    loader = data.train_loader(torch.Generator().manual_seed(0), pin_memory=False)
    assert loader.persistent_workers and loader.prefetch_factor == 2
    first = [labels.tolist() for _, labels in loader]
    second = [labels.tolist() for _, labels in loader]
    assert len(first) == len(second) == 2
