"""The embedded default data: class-structured images generated in code (not real data).

Every class has a prototype made of two oriented sine gratings and a coloured Gaussian blob
with class-specific orientations, frequencies, colours and position. A sample jitters each
of those around its class's values (orientation by one class spacing, so neighbouring
classes overlap), is shifted by up to a quarter of the image, and gets a class-independent
distractor grating and uniform pixel noise, quantised to uint8 like a real image. A network
learns it, but not at once: resnet8 is at ~30% training error after 200 iterations of batch
128 (a nearest-class-mean classifier on pixels gets ~37% accuracy, chance 10%).

Determinism: everything is drawn from CPU ``torch.Generator``s in float64 and quantised to
uint8, so a seed gives the same bytes on every machine (float32 fast paths of the RNG and
of sin/exp differ across CPU instruction sets; float64 rounding to uint8 hides last-bit
differences of libm).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor

from .augment import seeded_generator

SPLIT_STREAMS = {"train": 1, "test": 2}
DEFAULT_SIZES = {"train": 10_000, "test": 2_000}
JITTER = 1.0  # default spread of samples around their class prototype
NOISE = 0.5  # default pixel noise (std, relative to the signal amplitude)
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
    jitter: float = JITTER,
    noise: float = NOISE,
) -> tuple[Tensor, Tensor]:
    """``size`` class-balanced uint8 images (size x channels x H x W) and int64 labels.

    The class prototypes depend on (seed, image_size, channels, num_classes) only, so train
    and test splits share them; the samples of each split come from their own stream.
    ``jitter`` scales how far a sample strays from its prototype (orientation, frequency,
    colour, blob position; the classes overlap more as it grows), ``noise`` the pixel noise.
    """
    with _one_thread():
        return _render(size, split, image_size, channels, num_classes, seed, jitter, noise)


def _render(size, split, image_size, channels, num_classes, seed, jitter, noise):
    classes = seeded_generator(seed, 0)
    spacing = math.pi / num_classes  # orientations of neighbouring classes differ by this
    angle = torch.arange(num_classes, dtype=torch.float64) * spacing
    angle = angle + _uniform(classes, num_classes, low=0, high=spacing / 2)
    second_angle = angle + _uniform(classes, num_classes, low=math.pi / 4, high=3 * math.pi / 4)
    frequency = _uniform(classes, num_classes, 2, low=1.0, high=3.0)
    colours = torch.randn(num_classes, 3, channels, generator=classes, dtype=torch.float64)
    blob_centre = _uniform(classes, num_classes, 2, low=-0.5, high=0.5)

    samples = seeded_generator(seed, SPLIT_STREAMS[split])
    labels = torch.arange(size) % num_classes
    labels = labels[torch.randperm(size, generator=samples)]
    shift_pixels = max(1, image_size // 4)
    shift = torch.randint(-shift_pixels, shift_pixels + 1, (size, 2), generator=samples)
    shift = shift.double() * 2 / image_size
    normal = partial(torch.randn, generator=samples, dtype=torch.float64)
    sample_angle = (
        angle[labels, None]
        + jitter * spacing * normal(size, 2)
        + torch.stack(
            [torch.zeros(size, dtype=torch.float64), second_angle[labels] - angle[labels]], 1
        )
    )
    sample_frequency = frequency[labels] * torch.exp(0.3 * jitter * normal(size, 2))
    phase = _uniform(samples, size, 3, low=0, high=2 * math.pi)
    centre = blob_centre[labels] + 0.3 * jitter * normal(size, 2)
    weights = colours[labels] * _uniform(samples, size, 3, 1, low=0.5, high=1.5)
    weights = weights + jitter * normal(size, 3, channels)  # per-sample colour mix
    distractor_angle = _uniform(samples, size, low=0, high=math.pi)
    distractor_frequency = _uniform(samples, size, low=1.0, high=4.0)

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
        blob = (u - centre[part, 0, None, None]) ** 2 + (v - centre[part, 1, None, None]) ** 2
        patterns = torch.stack(
            [
                _grating(u, v, sample_angle[part, 0], sample_frequency[part, 0], phase[part, 0]),
                _grating(u, v, sample_angle[part, 1], sample_frequency[part, 1], phase[part, 1]),
                torch.exp(-blob / (2 * 0.3**2)) * 2 - 0.5,
            ],
            dim=1,
        )  # count x 3 components x H x W
        signal = torch.einsum("nkhw,nkc->nchw", patterns, weights[part]) / 3
        distractor = _grating(
            u, v, distractor_angle[part], distractor_frequency[part], phase[part, 2]
        )
        image = 0.5 + 0.2 * signal + 0.2 * distractor[:, None] + 0.2 * noise * pixel_noise
        images[part] = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels.long()
