"""The data sets as tensors: what ``gradflow.data`` exports (see its docstring)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserInputError
from . import DATASETS
from .augment import seeded_generator
from .formats import (
    CIFAR_FOLDER,
    FASHION_MNIST_DIR,
    download_cifar10,
    read_cifar_split,
    read_idx_split,
)
from .synthetic import DEFAULT_SIZES, synthetic_images

SPLITS = ("train", "test")
CIFAR10_DIR = Path(os.environ.get("GRADFLOW_CIFAR10", "~/.cache/gradflow/cifar10")).expanduser()
DESCRIPTIONS = {
    "synthetic": "synthetic class-structured images generated in code (not real data)",
    "fashion-mnist": "Fashion-MNIST (Xiao et al. 2017), real 28x28 grey images of clothing",
    "cifar10": "CIFAR-10 (Krizhevsky 2009), real 32x32 colour images",
}


@dataclass(eq=False)
class ImageDataset:
    """Images with labels; ``images`` = (raw / 255 - mean) / std per channel, float32."""

    raw: Tensor  # uint8 N x C x H x W
    labels: Tensor  # int64 N
    num_classes: int
    name: str
    split: str
    mean: tuple[float, ...]  # per channel, of the training split, on the [0, 1] scale
    std: tuple[float, ...]
    description: str = ""
    is_synthetic: bool = False
    _images: Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.raw.shape[1]

    @property
    def image_size(self) -> int:
        return self.raw.shape[2]

    @property
    def images(self) -> Tensor:
        """All images, normalised (computed once, on first use)."""
        if self._images is None:
            self._images = self.normalise(self.raw)
        return self._images

    def normalise(self, raw: Tensor) -> Tensor:
        """(raw / 255 - mean) / std per channel, as float32."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((raw.float() / 255 - mean) / std).contiguous()

    def take(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised images and labels at ``indices`` (normalises only those)."""
        if self._images is not None:
            return self._images[indices], self.labels[indices]
        return self.normalise(self.raw[indices]), self.labels[indices]

    def subset(self, indices: Tensor, split: str | None = None) -> ImageDataset:
        """The images at ``indices``, keeping this dataset's normalisation statistics."""
        return replace(
            self,
            raw=self.raw[indices],
            labels=self.labels[indices],
            split=split or self.split,
            _images=None,
        )

    def batch(self, batch_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A seeded measurement batch, class-balanced: classes take turns in a seeded random order.

        Sample i of the batch is the (i // K)-th randomly chosen image of the (i mod K)-th
        class present, so every class has floor or ceil of batch_size / K images.
        """
        if not 1 <= batch_size <= len(self):
            raise UserInputError(f"batch size must be 1..{len(self)}, got {batch_size}")
        generator = seeded_generator(seed, 7)
        order = torch.randperm(len(self), generator=generator)
        class_turn = torch.argsort(torch.randperm(self.num_classes, generator=generator))
        labels = self.labels[order]
        by_class = torch.sort(labels, stable=True).indices  # permuted order, grouped by class
        counts = torch.bincount(labels, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        rank_in_class = torch.empty_like(labels)
        rank_in_class[by_class] = torch.arange(len(labels)) - starts[labels[by_class]]
        turn = torch.sort(
            rank_in_class * self.num_classes + class_turn[labels], stable=True
        ).indices
        chosen = order[turn[:batch_size]]
        return self.take(chosen)


def train_val_split(
    dataset: ImageDataset, val_size: int, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Split a training set into (train, validation) of ``val_size`` images, seeded (45k/5k-style).

    Both parts keep the full training split's normalisation statistics.
    """
    if not 0 < val_size < len(dataset):
        raise UserInputError(f"validation size must be 1..{len(dataset) - 1}, got {val_size}")
    order = torch.randperm(len(dataset), generator=seeded_generator(seed, 11))
    return (
        dataset.subset(order[val_size:].sort().values, "train"),
        dataset.subset(order[:val_size].sort().values, "val"),
    )


def default_data_dir(name: str) -> Path | None:
    """Where a dataset is looked for when no ``data_dir`` is given."""
    return {"fashion-mnist": FASHION_MNIST_DIR, "cifar10": CIFAR10_DIR}.get(name)


def _pad(raw: Tensor, pad_to: int | None) -> Tensor:
    if pad_to is None or pad_to == raw.shape[-1]:
        return raw
    extra = pad_to - raw.shape[-1]
    if extra < 0 or raw.shape[-1] != raw.shape[-2]:
        raise UserInputError(f"cannot pad {tuple(raw.shape[-2:])} images to {pad_to}x{pad_to}")
    before = extra // 2
    return F.pad(raw, (before, extra - before, before, extra - before))


def _file_key(directory: Path) -> tuple:
    """Identity of the files a loader may read (names, sizes, mtimes), for the stats cache.

    Only the directory and the sub-folders the loaders look into, never a recursive walk
    (a user may point --data-dir at a large tree)."""
    entries = []
    for folder in (directory, directory / CIFAR_FOLDER, directory / "FashionMNIST" / "raw"):
        try:
            entries += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()]
        except OSError:
            continue
    return tuple(sorted(entries))


def _read_raw(
    name: str, directory: Path | None, split: str, options: tuple
) -> tuple[Tensor, Tensor]:
    if name == "synthetic":
        kwargs = dict(options)
        size = kwargs.pop("size", None) or DEFAULT_SIZES[split]
        return synthetic_images(size, split=split, **kwargs)
    assert directory is not None
    if name == "fashion-mnist":
        return read_idx_split(directory, split)
    return read_cifar_split(directory, split)


@functools.lru_cache(maxsize=16)
def _train_statistics(
    name, directory, pad_to, options, _key
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    raw, _ = _read_raw(name, directory, "train", options)
    return _statistics(_pad(raw, pad_to))


STATISTICS_CHUNK = 64  # images per histogram update in _statistics


def _statistics(raw: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 pixels on the [0, 1] scale, from each
    channel's histogram of the 256 values (exact, and a few MB at any size: the float64 copy
    of a 1000-image 224 x 224 training split was 1.2 GB)."""
    channels = raw.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    for start in range(0, raw.shape[0], STATISTICS_CHUNK):
        chunk = raw[start : start + STATISTICS_CHUNK].transpose(0, 1).reshape(channels, -1)
        for channel in range(channels):
            counts[channel] += torch.bincount(chunk[channel].long(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum(dim=1)
    mean = (counts @ values) / total
    variance = (counts * (values[None, :] - mean[:, None]) ** 2).sum(dim=1) / total
    return tuple(mean.tolist()), tuple(variance.sqrt().clamp_min(1e-6).tolist())


def _ensure_cifar10(directory: Path | None) -> None:
    """Download CIFAR-10 into ``directory`` unless its files are there already."""
    from .formats import cifar_folder

    try:
        cifar_folder(directory)
    except UserInputError:
        download_cifar10(directory)


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    split: str = "train",
    pad_to: int | None = None,
    download: bool = False,
    size: int | None = None,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    seed: int = 0,
) -> ImageDataset:
    """Load one split ("train" or "test") of a dataset as normalised tensors.

    ``size``, ``image_size``, ``channels``, ``num_classes``, ``seed`` shape the synthetic set
    (default 10,000 train / 2,000 test images, 3 x 32 x 32, 10 classes) and are ignored by
    the real datasets. ``download`` fetches CIFAR-10 with torchvision when it is missing.
    """
    if name not in DATASETS:
        raise UserInputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserInputError(
            f"unknown split {split!r}; choose train or test (or use train_val_split)"
        )
    directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(name)
    if name == "synthetic":
        if size is not None and size < num_classes:
            raise UserInputError(f"synthetic size {size} is smaller than {num_classes} classes")
        train_options = (
            ("image_size", image_size),
            ("channels", channels),
            ("num_classes", num_classes),
            ("seed", seed),
        )  # statistics come from the default-size training split
        options = (*train_options, ("size", size))
    else:
        options = train_options = ()
        if name == "cifar10" and download:
            _ensure_cifar10(directory)
    raw, labels = _read_raw(name, directory, split, options)
    raw = _pad(raw, pad_to)
    key = () if name == "synthetic" or directory is None else _file_key(directory)
    if (
        split == "train"
        and options[: len(train_options)] == train_options
        and (name != "synthetic" or size is None)
    ):
        mean, std = _statistics(raw)  # this is the training split: no second read
    else:
        mean, std = _train_statistics(name, directory, pad_to, train_options, key)
    return ImageDataset(
        raw=raw,
        labels=labels,
        num_classes=10 if name != "synthetic" else num_classes,
        name=name,
        split=split,
        mean=mean,
        std=std,
        description=DESCRIPTIONS[name] + (f", padded to {pad_to}x{pad_to}" if pad_to else ""),
        is_synthetic=name == "synthetic",
    )
