"""The paper's augmentation on batched tensors, and deterministic, resumable batch order.

He et al. (2016, section 4.2): pad 4 pixels on each side, take a random 32x32 crop (of the
padded image), flip horizontally with probability 1/2. Done here on a whole batch at once by
index arithmetic, with draws from a ``torch.Generator`` so a seed fixes the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserInputError

if TYPE_CHECKING:
    from . import ImageDataset


def seeded_generator(*keys: int) -> torch.Generator:
    """CPU generator seeded from integer keys, e.g. (seed, epoch, batch): same keys, same draws."""
    state = 0
    for key in keys:
        # Golden-ratio multiplier: distinct key tuples map to distinct, well-spread seeds.
        state = (state * 0x9E3779B97F4A7C15 + int(key) + 1) % (1 << 63)
    return torch.Generator().manual_seed(state)


def crop_flip_draws(count: int, pad: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random crop offsets (count x 2, each in 0..2*pad) and flip flags (count) for a batch."""
    offsets = torch.randint(0, 2 * pad + 1, (count, 2), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    return offsets, flips


def apply_crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Zero-pad ``images`` (B x C x H x W) by ``pad``, crop H x W at ``offsets``, flip where asked.

    Output pixel (b, c, i, j) = padded[b, c, dy_b + i, dx_b + j'] with j' = W-1-j if flipped.
    """
    batch, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets, flips = offsets.to(images.device), flips.to(images.device)
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # B x H
    columns = torch.arange(width, device=images.device).expand(batch, width)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + offsets[:, 1, None]
    index = torch.arange(batch, device=images.device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], columns[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous()


def pad_crop_flip(images: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """The paper's augmentation on a batch: zero padding, random crop of the original size, h-flip.

    Images are normalised per channel, so zero padding pads with the mean colour.
    """
    offsets, flips = crop_flip_draws(len(images), pad, generator)
    return apply_crop_flip(images, offsets, flips, pad)


class BatchLoader:
    """Training batches by iteration number: batch ``i`` depends only on (seed, i), so a run
    resumed at iteration ``i`` sees exactly the batches an uninterrupted run would.

    Each epoch is a seeded permutation of the dataset cut into global batches of
    ``batch_size`` (the last incomplete one dropped). Under torch.distributed, rank ``r`` of
    ``world_size`` takes the r-th contiguous share of every global batch (batch_size /
    world_size images), so the ranks see disjoint shards and the global batch is unchanged.
    Augmentation draws are made for the global batch, so they too do not depend on the
    number of processes.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        seed: int = 0,
        augment: bool = True,
        pad: int = 4,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1 or batch_size % world_size:
            raise UserInputError(
                f"batch size {batch_size} must be a positive multiple of the number of "
                f"processes ({world_size})"
            )
        if batch_size > len(dataset):
            raise UserInputError(
                f"batch size {batch_size} is larger than the {len(dataset)} training images"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.pad = pad
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.batches_per_epoch = len(dataset) // batch_size
        self._epoch: tuple[int, Tensor] | None = None

    def permutation(self, epoch: int) -> Tensor:
        """The order of the dataset in ``epoch`` (a seeded random permutation)."""
        if self._epoch is None or self._epoch[0] != epoch:
            order = torch.randperm(len(self.dataset), generator=seeded_generator(self.seed, epoch))
            self._epoch = (epoch, order)
        return self._epoch[1]

    def batch(self, iteration: int) -> tuple[Tensor, Tensor]:
        """This rank's share (images, labels) of global batch number ``iteration``."""
        epoch, position = divmod(iteration, self.batches_per_epoch)
        start = position * self.batch_size
        indices = self.permutation(epoch)[start : start + self.batch_size]
        share = self.batch_size // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        images, labels = self.dataset.take(indices[mine])
        if self.augment:
            draws = seeded_generator(self.seed, epoch, position, 1)
            offsets, flips = crop_flip_draws(self.batch_size, self.pad, draws)
            images = apply_crop_flip(images, offsets[mine], flips[mine], self.pad)
        return images.to(self.device), labels.to(self.device)
