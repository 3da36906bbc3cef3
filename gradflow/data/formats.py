"""Readers of the real on-disk formats: IDX (Fashion-MNIST, MNIST) and the CIFAR-10 pickles.

Both return raw ``uint8`` images as an N x C x H x W tensor plus ``int64`` labels, and raise
``UserInputError`` naming the file, what was expected and what was found.
"""

from __future__ import annotations

import gzip
import io
import pickle
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import UserInputError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR_IMAGE_BYTES = 3 * 32 * 32


def _idx_hint(directory: Path) -> str:
    expected = ", ".join(f"{name}[.gz]" for pair in IDX_FILES.values() for name in pair)
    return (
        f"expected the Fashion-MNIST IDX files {expected} in {directory}; on Debian: "
        f"apt-get install {FASHION_MNIST_PACKAGE} (installs them in {FASHION_MNIST_DIR}), "
        "or pass --data-dir with a directory holding them"
    )


def find_idx_file(directory: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` in ``directory`` (or in torchvision's ``FashionMNIST/raw``)."""
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    if not directory.is_dir():
        raise UserInputError(f"data directory {directory} does not exist: {_idx_hint(directory)}")
    raise UserInputError(f"no {stem}[.gz] in {directory}: {_idx_hint(directory)}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise UserInputError(f"cannot read {path}: {err} (corrupt or truncated file?)") from None


def read_idx(path: Path, magic: int, dims: int) -> Tensor:
    """An IDX file of unsigned bytes as a uint8 tensor; checks magic number and size.

    Layout: big-endian int32 magic (0x0000080D: type 08 = ubyte, D dimensions), D big-endian
    int32 sizes, then the product of the sizes in bytes.
    """
    data = _read_bytes(path)
    header = 4 * (1 + dims)
    if len(data) < header:
        raise UserInputError(f"{path} is truncated: {len(data)} bytes, shorter than its header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise UserInputError(
            f"{path} is not an IDX file of {dims}-d unsigned bytes: magic number "
            f"0x{found:08X}, expected 0x{magic:08X}"
        )
    shape = tuple(int.from_bytes(data[4 * i : 4 * i + 4], "big") for i in range(1, dims + 1))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise UserInputError(
            f"{path} has {len(data)} bytes, expected {expected} for shape {shape} "
            "(truncated or corrupt file?)"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def read_idx_split(directory: Path, split: str) -> tuple[Tensor, Tensor]:
    """(uint8 images N x 1 x H x W, int64 labels) of one split of an IDX dataset directory."""
    image_stem, label_stem = IDX_FILES[split]
    images_path = find_idx_file(directory, image_stem)
    labels_path = find_idx_file(directory, label_stem)
    images = read_idx(images_path, IDX_IMAGES_MAGIC, 3)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC, 1).long()
    if len(images) != len(labels):
        raise UserInputError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; the files do not belong together"
        )
    if len(labels) and int(labels.max()) > 9:
        raise UserInputError(f"{labels_path} has label {int(labels.max())}; expected 0..9")
    return images.unsqueeze(1), labels


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR batches hold (dicts, lists, numpy arrays): no code runs."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _cifar_hint(directory: Path) -> str:
    names = ", ".join(CIFAR_FILES["train"] + CIFAR_FILES["test"])
    return (
        f"expected the CIFAR-10 python batches ({names}) in {directory} or in "
        f"{directory / CIFAR_FOLDER} (the layout of cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html); pass --data-dir, or --download "
        "to fetch them with torchvision"
    )


def cifar_folder(directory: Path) -> Path:
    """The folder holding the batches: ``directory`` itself or its ``cifar-10-batches-py``."""
    for folder in (directory, directory / CIFAR_FOLDER):
        if (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file():
            return folder
    if not directory.is_dir():
        raise UserInputError(f"data directory {directory} does not exist: {_cifar_hint(directory)}")
    raise UserInputError(f"no CIFAR-10 batches in {directory}: {_cifar_hint(directory)}")


def read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 pickle batch: dict with b"data" (uint8 N x 3072, RGB planes) and b"labels"."""
    if not path.is_file():
        raise UserInputError(f"missing {path}: {_cifar_hint(path.parent)}")
    try:
        with path.open("rb") as handle:
            batch = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means a corrupt or foreign file
        raise UserInputError(f"{path} is not a CIFAR-10 python batch: {err}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserInputError(f"{path} is not a CIFAR-10 batch: expected a dict with data, labels")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_IMAGE_BYTES:
        raise UserInputError(
            f"{path}: data is {data.dtype} of shape {data.shape}, expected uint8 N x 3072"
        )
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < 10):
        raise UserInputError(f"{path}: expected {len(data)} labels in 0..9, got {labels.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def read_cifar_split(directory: Path, split: str) -> tuple[Tensor, Tensor]:
    """(uint8 images N x 3 x 32 x 32, int64 labels) of the CIFAR-10 train or test split."""
    folder = cifar_folder(directory)
    parts = [read_cifar_batch(folder / name) for name in CIFAR_FILES[split]]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def download_cifar10(directory: Path) -> None:
    """Fetch CIFAR-10 with torchvision's downloader into ``directory`` (only when asked)."""
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        raise UserInputError(
            "--download needs torchvision (pip install torchvision); or download "
            f"cifar-10-python.tar.gz yourself and unpack it in {directory}"
        ) from None
    try:
        CIFAR10(str(directory), train=True, download=True)
    except Exception as err:  # network errors come in many types
        raise UserInputError(f"downloading CIFAR-10 into {directory} failed: {err}") from None
