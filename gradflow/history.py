"""The trainer's data and its tidy ``history`` frame: data sets, evaluation passes, rows.

``history`` has one row per (model, step, split, quantity): error in %, mean cross-entropy
loss and the learning rate, as ``gradflow.train`` logs them every ``eval_every`` iterations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import TrainConfig
from .data import ImageDataset, load_dataset, train_val_split
from .distributed import World
from .errors import UserInputError

HISTORY_COLUMNS = ("model", "step", "split", "quantity", "value")


def dataset_split(config: TrainConfig, split: str, **options: object) -> ImageDataset:
    """``split`` of the config's data set, loaded as the trainer loads it (``options``: more
    ``load_dataset`` arguments)."""
    return load_dataset(
        config.data,
        split=split,
        data_dir=config.data_dir,
        pad_to=config.pad_to,
        seed=config.seed,
        image_size=config.synthetic_image_size,
        **options,
    )


def training_datasets(config: TrainConfig) -> tuple[ImageDataset, dict[str, ImageDataset]]:
    """(training set, {split: evaluation set}) as the config asks."""
    train_set = dataset_split(config, "train", size=config.synthetic_size, download=config.download)
    evaluation = {"test": dataset_split(config, "test")}
    if config.val_size:
        train_set, evaluation["val"] = train_val_split(train_set, config.val_size, config.seed)
    return train_set, evaluation


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ImageDataset, world: World, batch_size: int) -> Tensor:
    """[wrong, summed loss, count] over ``dataset`` in eval mode, summed over ranks' shards."""
    was_training = model.training
    world.broadcast_buffers(model)  # every rank evaluates rank 0's (= the saved) model
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=world.device)
    indices = torch.arange(world.rank, len(dataset), world.size)
    for chunk in indices.split(batch_size):
        images, labels = dataset.take(chunk)
        images, labels = images.to(world.device), labels.to(world.device)
        logits = model(images)
        sums += batch_sums(logits, labels)
    model.train(was_training)
    return world.sum(sums)


def batch_sums(logits: Tensor, labels: Tensor) -> Tensor:
    """[wrong, summed cross-entropy, count] of one batch, float64."""
    wrong = (logits.argmax(1) != labels).sum()
    loss = F.cross_entropy(logits.detach().float(), labels, reduction="sum")
    count = torch.tensor(len(labels), device=logits.device)
    return torch.stack([wrong.double(), loss.double(), count.double()])


def history_rows(label: str, step: int, split: str, sums: Tensor) -> list[dict]:
    """Error (%) and mean loss rows from [wrong, summed loss, count]; a NaN loss is divergence."""
    wrong, loss, count = sums.tolist()
    if not math.isfinite(loss):
        raise UserInputError(
            f"training diverged by iteration {step} ({split} loss {loss}); "
            "lower --lr or add --warmup-iterations"
        )
    return [
        {
            "model": label,
            "step": step,
            "split": split,
            "quantity": "error",
            "value": 100 * wrong / count,
        },
        {"model": label, "step": step, "split": split, "quantity": "loss", "value": loss / count},
    ]


def last_error(history: list[dict], split: str) -> float:
    """The last logged error (%) on ``split``."""
    return next(
        r["value"] for r in reversed(history) if r["split"] == split and r["quantity"] == "error"
    )
