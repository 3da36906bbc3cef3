"""Streaming moments (count, mean, M2) of measured tensors: merged across batches and ranks.

Every per-layer statistic of the Recorder is kept as (n, mean, M2 = sum (v - mean)^2), so that
several batches of a step, micro-batches and torch.distributed ranks combine into exactly the
statistics of the concatenated data (Chan et al. 1979), without storing the values.
"""

from __future__ import annotations

import torch
from torch import Tensor


def chan_merge(
    count_a: float | Tensor,
    mean_a: Tensor,
    m2_a: Tensor,
    count_b: float | Tensor,
    mean_b: Tensor,
    m2_b: Tensor,
) -> tuple[float | Tensor, Tensor, Tensor]:
    """Chan et al. (1979): (n, mean, M2) of the union of two samples, stable in float32.

    With d = mean_b - mean_a: n = n_a + n_b, mean = mean_a + d n_b / n,
    M2 = M2_a + M2_b + d^2 n_a n_b / n.
    """
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / count)
    return count, mean, m2


def gather_moments(counts: Tensor, means: Tensor, m2s: Tensor, group=None) -> tuple[Tensor, ...]:
    """(n, mean, M2) per entry merged over torch.distributed ranks by one all_gather (float64).

    n = sum_r n_r, mean = sum_r n_r mean_r / n, M2 = sum_r M2_r + sum_r n_r (mean_r - mean)^2.
    """
    import torch.distributed as dist

    f64 = torch.float64  # counts beyond 2^24 are not exact in float32
    local = torch.stack([counts.to(f64), means.to(f64), m2s.to(f64)])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    n, mean_r, m2_r = torch.stack(gathered).unbind(1)  # each (world, entries)
    total = n.sum(0)
    mean = (n * mean_r).sum(0) / total
    return total, mean, m2_r.sum(0) + (n * (mean_r - mean) ** 2).sum(0)


def moments_of(values: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, M2 = sum (v - mean)^2) of a flat tensor, on its device, without a sync on GPUs.

    Shifted-data algorithm: with a shift K, S = sum (v - K), Q = sum (v - K)^2,
    mean = K + S/n, M2 = Q - S^2/n; it loses about log10(1 / (1 - r)) digits, r = (mean - K)^2
    / mean((v - K)^2). On the CPU (where reading a scalar costs nothing) K = 0 first, two fast
    passes (sum, dot); if r > 0.9 the pass is redone with K = mean. On other devices K is one of
    the values (so r = O(1)) and the result never leaves the device. torch.var_mean (Welford)
    would be exact too but is ~10x slower on the CPU than sum + dot.
    """
    count = values.numel()
    if values.device.type == "cpu":
        total, squares = values.sum(), torch.dot(values, values)
        mean = total / count
        if float(mean * mean) <= 0.9 * float(squares / count):
            return mean, (squares - total * mean).clamp_min(0)
        shift = mean
    else:
        shift = values[0]
    centred = values - shift
    total = centred.sum()
    m2 = torch.dot(centred, centred) - total * total / count
    return shift + total / count, m2.clamp_min(0)
