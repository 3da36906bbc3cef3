"""Datasets as normalised tensors: ``synthetic`` (default), ``fashion-mnist``, ``cifar10``.

``load_dataset(name, data_dir=..., split=...)`` returns an ``ImageDataset`` whose ``images``
are float32 N x C x H x W, normalised per channel with the *training* split's mean and std
(of pixel values scaled to [0, 1]), whichever split is loaded. Raw uint8 pixels are kept and
normalised on demand (``take``), so a 50k-image training set costs 150 MB, not 600 MB.

Fashion-MNIST images are 1 x 28 x 28; ``pad_to=32`` zero-pads them (black, the background
colour) to 32 x 32 before the statistics are computed, so CIFAR nets see the paper's map
sizes 32/16/8. Missing or corrupt files raise ``UserInputError`` saying what was expected
where.

Light on import: the names below load ``datasets`` (and torch) on first use, so that the
command line can list the data sets in ``--help`` without importing torch.
"""

from __future__ import annotations

import importlib

DATASETS = ("synthetic", "fashion-mnist", "cifar10")
_LAZY = {
    "BatchLoader": "augment",
    "pad_crop_flip": "augment",
    "seeded_generator": "augment",
}
__all__ = [
    "DATASETS",
    "BatchLoader",
    "ImageDataset",
    "load_dataset",
    "pad_crop_flip",
    "seeded_generator",
    "train_val_split",
]


def __getattr__(name: str) -> object:
    """``gradflow.data.NAME`` from the submodule that defines it, imported on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module(f"{__name__}.{_LAZY.get(name, 'datasets')}")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
