"""The embedded default data: class-structured images generated in code (not real data).

Every class has a prototype made of two oriented sine gratings and a coloured Gaussian blob
with class-specific orientation, frequency, colour and position. A sample is its class
prototype, randomly shifted, with per-component contrast jitter, plus a class-independent
distractor grating and uniform pixel noise, quantised to uint8 like a real image. A network
can learn the classes (orientation/colour/position statistics) but not from one pixel alone.

Determinism: everything is drawn from CPU ``torch.Generator``s in float64 and quantised to
uint8, so a seed gives the same bytes on every machine (float32 fast paths of the RNG and
of sin/exp differ across CPU instruction sets; float64 rounding to uint8 hides last-bit
differences of libm).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .augment import seeded_generator

SPLIT_STREAMS = {"train": 1, "test": 2}
DEFAULT_SIZES = {"train": 10_000, "test": 2_000}
CHUNK = 500  # images rendered at once; part of the definition of the data (draw order)


def _uniform(generator: torch.Generator, *shape: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def _grating(u: Tensor, v: Tensor, angle: Tensor, frequency: Tensor, phase: Tensor) -> Tensor:
    """sin(2 pi f (u cos a + v sin a) + phase) for a batch of (a, f, phase) -> B x H x W."""
    along = u * angle.cos()[:, None, None] + v * angle.sin()[:, None, None]
    return torch.sin(2 * math.pi * frequency[:, None, None] * along + phase[:, None, None])


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run small elementwise ops on one thread: on a busy machine, waking a pool for ~100k
    elements costs far more than the work (50x slower measured on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def synthetic_images(
    size: int,
    *,
    split: str = "train",
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 0.35,
    max_shift: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``size`` class-balanced uint8 images (size x channels x H x W) and int64 labels.

    The class prototypes depend on (seed, image_size, channels, num_classes) only, so train
    and test splits share them; the samples of each split come from their own stream.
    """
    with _one_thread():
        return _render(size, split, image_size, channels, num_classes, seed, noise, max_shift)


def _render(size, split, image_size, channels, num_classes, seed, noise, max_shift):
    classes = seeded_generator(seed, 0)
    angle = torch.linspace(0, math.pi, num_classes + 1, dtype=torch.float64)[:-1]
    angle = angle + _uniform(classes, num_classes, low=0, high=math.pi / (2 * num_classes))
    second_angle = angle + _uniform(classes, num_classes, low=math.pi / 4, high=3 * math.pi / 4)
    frequency = _uniform(classes, num_classes, 2, low=1.0, high=3.0)
    colours = torch.randn(num_classes, 3, channels, generator=classes, dtype=torch.float64)
    colours = colours / colours.norm(dim=2, keepdim=True).clamp_min(1e-12) * math.sqrt(channels)
    blob_centre = _uniform(classes, num_classes, 2, low=-0.5, high=0.5)

    samples = seeded_generator(seed, SPLIT_STREAMS[split])
    labels = torch.arange(size) % num_classes
    labels = labels[torch.randperm(size, generator=samples)]
    shift_pixels = max(1, image_size // 8) if max_shift is None else max_shift
    shift = (
        torch.randint(-shift_pixels, shift_pixels + 1, (size, 2), generator=samples).double()
        * 2
        / image_size
    )
    contrast = _uniform(samples, size, 3, low=0.5, high=1.5)
    distractor_angle = _uniform(samples, size, low=0, high=math.pi)
    distractor_frequency = _uniform(samples, size, low=1.0, high=4.0)
    distractor_phase = _uniform(samples, size, low=0, high=2 * math.pi)
    grating_phase = _uniform(samples, size, 2, low=0, high=math.pi / 2)
    axis = torch.linspace(-1, 1, image_size, dtype=torch.float64)
    v_grid, u_grid = torch.meshgrid(axis, axis, indexing="ij")
    images = torch.empty(size, channels, image_size, image_size, dtype=torch.uint8)
    # Rendered in fixed chunks: small temporaries are much faster than 200 MB ones.
    for start in range(0, size, CHUNK):
        part = slice(start, start + CHUNK)
        count = len(labels[part])
        # Uniform noise of unit variance: 3x cheaper to draw than Gaussian noise in float64.
        pixel_noise = torch.rand(
            count, channels, image_size, image_size, generator=samples, dtype=torch.float64
        )
        pixel_noise = (pixel_noise - 0.5) * math.sqrt(12)
        u = u_grid[None] - shift[part, 0, None, None]
        v = v_grid[None] - shift[part, 1, None, None]
        y = labels[part]
        blob = (u - blob_centre[y, 0, None, None]) ** 2 + (v - blob_centre[y, 1, None, None]) ** 2
        patterns = torch.stack(
            [
                _grating(u, v, angle[y], frequency[y, 0], grating_phase[part, 0]),
                _grating(u, v, second_angle[y], frequency[y, 1], grating_phase[part, 1]),
                torch.exp(-blob / (2 * 0.3**2)) * 2 - 0.5,
            ],
            dim=1,
        )  # count x 3 components x H x W
        weights = colours[y] * contrast[part, :, None]  # count x 3 components x channels
        signal = torch.einsum("nkhw,nkc->nchw", patterns, weights) / 3
        distractor = _grating(
            u, v, distractor_angle[part], distractor_frequency[part], distractor_phase[part]
        )
        image = 0.5 + 0.2 * signal + 0.15 * distractor[:, None] + noise * 0.2 * pixel_noise
        images[part] = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels.long()
