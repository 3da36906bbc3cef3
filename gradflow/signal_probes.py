"""Signal propagation probes (Brock, De and Smith 2021) and the shortcut/branch gradient split.

Forward, at every block boundary z_k (k = 0: the input of the first block, ``stem``; k: the
output of block k), with statistics per channel c over the batch and every other axis:

- ``channel_mean_sq``  = mean_c (mean z_c)^2, the average channel squared mean;
- ``channel_variance`` = mean_c var(z_c), the average channel variance (population, ddof 0);
- ``branch_variance``  = mean_c var(F_k(x)_c) at the end of residual block k's branch.

The channel axis follows the tensor layout (``channel_axis``): 4-D and wider (N, C, H, W[, D])
axis 1; 3-D (N, T, D) token tensors the last (feature) axis; 2-D (N, D) the features; 1-D one
channel. A conv1d net's (N, C, L) tensors get the token rule: pass ``channel_axis=1`` to the
probes (``ChannelVariance(channel_axis=1)``) to override.

Backward, at every residual block y = post(u), u = F(x) + S(x), with g_u = dL/du the gradient
at the sum (after the ReLU's mask in a post-activation block):

- ``shortcut_grad_norm`` = ||g_u J_S(x)||, what reaches the block input through S;
- ``branch_grad_norm``   = ||g_u J_F(x)||, what reaches it through F;
- ``shortcut_grad_share`` = shortcut / (shortcut + branch): 1 when the branch carries nothing
  (zero-gamma at init), 1/2 when both paths carry the same norm.

Several batches of a step: per-channel (n, mean, M2) merge by Chan's formula (exactly the
statistics of the concatenated batches); the two gradient norms are sqrt of the sum of
squares over the batches (norms over the whole step, like ``activation_grad_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .moments import chan_merge, gather_moments


def channel_axis(z: Tensor, override: int | None = None) -> int | None:
    """The channel axis of ``z`` by layout (module docstring); None: one channel (1-D)."""
    if override is not None:
        return override % z.dim()
    if z.dim() >= 4:
        return 1
    return z.dim() - 1 if z.dim() >= 2 else None


def channel_moments(z: Tensor, axis: int | None) -> tuple[int, Tensor, Tensor]:
    """(n per channel, mean per channel, M2 = sum (v - mean)^2 per channel) in float32+.

    One fused ``torch.var_mean`` over every axis but ``axis`` (Welford: exact also when the
    mean is large against the spread).
    """
    z = z.detach()
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    if axis is None:
        z, axis = z.reshape(-1, 1), 1
    dims = [d for d in range(z.dim()) if d != axis]
    count = z.numel() // z.shape[axis]
    variance, mean = torch.var_mean(z, dim=dims, correction=0)
    return count, mean, variance * count


class ChannelStats:
    """Running per-channel (n, mean, M2) of one site over the batches of a step (on device)."""

    __slots__ = ("count", "m2", "mean")

    def __init__(self, z: Tensor, axis: int | None) -> None:
        self.count, self.mean, self.m2 = channel_moments(z, axis)

    def merge(self, other: ChannelStats) -> None:
        """Fold another batch in (Chan's formula per channel)."""
        self.count, self.mean, self.m2 = chan_merge(
            self.count, self.mean, self.m2, other.count, other.mean, other.m2
        )

    def summary(self) -> tuple[Tensor, Tensor]:
        """(mean_c mean_c^2, mean_c M2_c / n), two 0-d tensors."""
        return (self.mean * self.mean).mean(), (self.m2 / self.count).mean()


class SplitStats:
    """Sums over a step's batches of ||g_u J_S||^2 and ||g_u J_F||^2 at one residual block."""

    __slots__ = ("branch_sumsq", "shortcut_sumsq")

    def __init__(self, shortcut_sumsq: Tensor, branch_sumsq: Tensor) -> None:
        self.shortcut_sumsq, self.branch_sumsq = shortcut_sumsq, branch_sumsq

    def merge(self, other: SplitStats) -> None:
        self.shortcut_sumsq = self.shortcut_sumsq + other.shortcut_sumsq
        self.branch_sumsq = self.branch_sumsq + other.branch_sumsq


@dataclass
class ChannelBatch:
    """One step of per-key channel summaries, stacked over ``keys`` (1-D device tensors)."""

    keys: list[str]
    mean_sq: Tensor
    variance: Tensor


@dataclass
class SplitBatch:
    """One step of shortcut/branch gradient sums of squares, stacked over ``keys``."""

    keys: list[str]
    shortcut_sumsq: Tensor
    branch_sumsq: Tensor


def channel_batch(stats: dict[str, ChannelStats], keys: list[str]) -> ChannelBatch:
    pairs = [stats[k].summary() for k in keys]
    device = pairs[0][0].device
    mean_sq = torch.stack([m.to(device) for m, _ in pairs])
    return ChannelBatch(keys, mean_sq, torch.stack([v.to(device) for _, v in pairs]))


def split_batch(stats: dict[str, SplitStats], keys: list[str]) -> SplitBatch:
    device = stats[keys[0]].shortcut_sumsq.device
    shortcut = torch.stack([stats[k].shortcut_sumsq.to(device) for k in keys])
    return SplitBatch(keys, shortcut, torch.stack([stats[k].branch_sumsq.to(device) for k in keys]))


def all_reduce_signal(channels: list[ChannelStats], splits: list[SplitStats], group=None) -> None:
    """Merge per-key signal statistics in place across torch.distributed ranks (same key order).

    Channels: n_r, mean_r, M2_r of every rank gathered (one all_gather of the concatenated
    vectors), then N = sum n_r, mean = sum n_r mean_r / N, M2 = sum M2_r + sum n_r (mean_r -
    mean)^2 per channel; splits: sums of squares by one SUM all_reduce. No-op without an
    initialised process group.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    f64 = torch.float64
    if channels:
        sizes = [s.mean.numel() for s in channels]
        counts = torch.cat([s.mean.new_full((n,), float(s.count), dtype=f64)
                            for s, n in zip(channels, sizes, strict=True)])  # fmt: skip
        total, mean, m2 = gather_moments(
            counts,
            torch.cat([s.mean for s in channels]),
            torch.cat([s.m2 for s in channels]),
            group,
        )
        for stats, part_mean, part_m2, part_n in zip(
            channels, mean.split(sizes), m2.split(sizes), total.split(sizes), strict=True
        ):
            stats.mean = part_mean.to(stats.mean.dtype)
            stats.m2 = part_m2.to(stats.m2.dtype)
            stats.count = int(part_n[0])
    if splits:
        sums = torch.stack(
            [
                torch.stack([s.shortcut_sumsq for s in splits]).to(f64),
                torch.stack([s.branch_sumsq for s in splits]).to(f64),
            ]
        )
        dist.all_reduce(sums, group=group)
        for i, stats in enumerate(splits):
            stats.shortcut_sumsq = sums[0, i].to(stats.shortcut_sumsq.dtype)
            stats.branch_sumsq = sums[1, i].to(stats.branch_sumsq.dtype)
