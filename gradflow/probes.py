"""What the Recorder measures: one small class per probe, plus the streaming statistics.

Three measurement sites, each filled by hooks the Recorder attaches:

- ``"response"``: the output of selected layers (forward hooks). Per layer the Recorder keeps
  a running count n, mean and M2 = sum (v - mean)^2 over *all* output elements (samples,
  channels, positions) and the running min/max, merged batch by batch with Chan's formula,
  on the tensor's device. Nothing else is kept: activations are never stored.
- ``"boundary"``: the gradient dL/dz at block boundaries (tensor hooks on block outputs and on
  the input of the first block). Per point: the sum of squares over the batch tensor, summed
  over the batches of a step, and the per-sample scaled sum used by ``activation_grad_rms``.
- ``"parameter"``: parameter tensors and their ``.grad``, read once at ``Recorder.step()``.

A probe turns the stacked site statistics of one step into values, one per site key, with a
handful of vectorised ops on the device (nothing is synchronised until the Recorder moves the
whole step to the CPU once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .errors import UserInputError
from .moments import chan_merge, gather_moments, moments_of

if TYPE_CHECKING:
    from .signal_probes import ChannelBatch, SplitBatch

RESPONSE_STD = "response_std"
RESPONSE_MEAN = "response_mean"
RESPONSE_ABSMAX = "response_absmax"
ACTIVATION_GRAD_NORM = "activation_grad_norm"
ACTIVATION_GRAD_RMS = "activation_grad_rms"
PARAM_GRAD_NORM = "param_grad_norm"
WEIGHT_NORM = "weight_norm"
UPDATE_RATIO = "update_ratio"
CHANNEL_MEAN_SQ = "channel_mean_sq"
CHANNEL_VARIANCE = "channel_variance"
BRANCH_VARIANCE = "branch_variance"
SHORTCUT_GRAD_NORM = "shortcut_grad_norm"
BRANCH_GRAD_NORM = "branch_grad_norm"
SHORTCUT_GRAD_SHARE = "shortcut_grad_share"
SIGNAL_QUANTITIES = (  # gradflow.signal_probes: block boundaries and residual blocks
    CHANNEL_MEAN_SQ,
    CHANNEL_VARIANCE,
    BRANCH_VARIANCE,
    SHORTCUT_GRAD_NORM,
    BRANCH_GRAD_NORM,
    SHORTCUT_GRAD_SHARE,
)
QUANTITIES = (
    RESPONSE_STD,
    RESPONSE_MEAN,
    RESPONSE_ABSMAX,
    ACTIVATION_GRAD_NORM,
    ACTIVATION_GRAD_RMS,
    PARAM_GRAD_NORM,
    WEIGHT_NORM,
    UPDATE_RATIO,
    *SIGNAL_QUANTITIES,
)


class ResponseStats:
    """Running statistics of one layer's outputs over the batches of a step (on device)."""

    __slots__ = ("count", "high", "low", "m2", "mean")

    def __init__(self, output: Tensor, moments: bool, extrema: bool) -> None:
        values = output.detach().reshape(-1)
        self.count = values.numel()
        self.mean = self.m2 = self.low = self.high = None
        if moments:
            self.mean, self.m2 = moments_of(values)
        if extrema:
            self.low, self.high = torch.aminmax(values)

    def merge(self, other: ResponseStats) -> None:
        """Fold another batch's statistics in (Chan's formula; min/max elementwise)."""
        if self.mean is not None:
            _, self.mean, self.m2 = chan_merge(
                self.count, self.mean, self.m2, other.count, other.mean, other.m2
            )
        if self.low is not None:
            self.low = torch.minimum(self.low, other.low)
            self.high = torch.maximum(self.high, other.high)
        self.count += other.count


class BoundaryStats:
    """Sums over a step's batches of ||dL/dz||^2 and of B^2 ||dL/dz||^2, and the samples B."""

    __slots__ = ("samples", "scaled_sumsq", "sumsq")

    def __init__(self, grad: Tensor, mean_reduced: bool) -> None:
        self.samples = grad.shape[0] if grad.dim() > 0 else 1
        self.sumsq = torch.linalg.vector_norm(grad).square()
        # sample i's own loss gradient is B dL/dz_i for a mean-reduced loss, dL/dz_i for a
        # summed one (see ActivationGradNorm): store sum_i ||g_i||^2 for this batch
        self.scaled_sumsq = self.sumsq * self.samples**2 if mean_reduced else self.sumsq

    def merge(self, other: BoundaryStats) -> None:
        self.sumsq = self.sumsq + other.sumsq
        self.scaled_sumsq = self.scaled_sumsq + other.scaled_sumsq
        self.samples += other.samples


@dataclass
class ResponseBatch:
    """One step of response statistics, stacked over ``keys`` (1-D device tensors)."""

    keys: list[str]
    count: Tensor
    mean: Tensor | None
    m2: Tensor | None
    low: Tensor | None
    high: Tensor | None


@dataclass
class BoundaryBatch:
    """One step of boundary statistics, stacked over ``keys``."""

    keys: list[str]
    sumsq: Tensor
    scaled_sumsq: Tensor
    samples: Tensor


@dataclass
class ParameterBatch:
    """Parameters named ``keys``; ``grads`` of the ``grad_keys`` that have one; the snapshot
    of the parameters at the previous step (None when not kept)."""

    keys: list[str]
    params: list[Tensor]
    grad_keys: list[str]
    grads: list[Tensor]
    previous: list[Tensor] | None


Values = dict[str, tuple[list[str], Tensor]]


class Probe:
    """One measured thing: its name, the site it reads and how a step becomes values."""

    name: ClassVar[str]
    site: ClassVar[str]
    quantities: ClassVar[tuple[str, ...]]
    needs_moments: ClassVar[bool] = False
    needs_extrema: ClassVar[bool] = False
    keeps_snapshot: ClassVar[bool] = False  # needs the parameters of the previous step

    def values(self, batch) -> Values:
        """Quantity -> (keys, 1-D tensor of one value per key), computed on the device."""
        raise NotImplementedError


class ResponseStd(Probe):
    """Population std (ddof 0) of a layer's output over all elements of the step's batches."""

    name, site, quantities, needs_moments = RESPONSE_STD, "response", (RESPONSE_STD,), True

    def values(self, batch: ResponseBatch) -> Values:
        return {RESPONSE_STD: (batch.keys, (batch.m2 / batch.count).sqrt())}


class ResponseMean(Probe):
    """Mean of a layer's output over all elements of the step's batches."""

    name, site, quantities, needs_moments = RESPONSE_MEAN, "response", (RESPONSE_MEAN,), True

    def values(self, batch: ResponseBatch) -> Values:
        return {RESPONSE_MEAN: (batch.keys, batch.mean)}


class ResponseAbsmax(Probe):
    """max |v| over all elements of a layer's output in the step's batches."""

    name, site, quantities, needs_extrema = RESPONSE_ABSMAX, "response", (RESPONSE_ABSMAX,), True

    def values(self, batch: ResponseBatch) -> Values:
        return {RESPONSE_ABSMAX: (batch.keys, torch.maximum(-batch.low, batch.high))}


class ActivationGradNorm(Probe):
    """dL/dz at block boundaries: the batch norm and a batch-size-free per-sample RMS.

    ``activation_grad_norm`` = ||dL/dz||_F, the Frobenius norm of the gradient of the loss
    with respect to the whole boundary tensor z (batch x features), summed in squares over
    the batches of a step: sqrt(sum_b ||dL/dz_b||_F^2).

    ``activation_grad_rms`` = sqrt(mean_i ||g_i||^2), the RMS over samples i of the gradient
    of sample i's own loss l_i. With PyTorch's default mean reduction L = (1/B) sum_i l_i,
    so g_i = B dL/dz_i (``loss_reduction="mean"``); with ``"sum"``, g_i = dL/dz_i. Under BN in
    train mode samples are coupled and g_i is the i-th slice of the batch gradient. Since
    sum_i ||dL/dz_i||^2 = ||dL/dz||_F^2, one batch gives sqrt(B) ||dL/dz||_F (mean reduction).
    """

    name, site = ACTIVATION_GRAD_NORM, "boundary"
    quantities = (ACTIVATION_GRAD_NORM, ACTIVATION_GRAD_RMS)

    def values(self, batch: BoundaryBatch) -> Values:
        return {
            ACTIVATION_GRAD_NORM: (batch.keys, batch.sumsq.sqrt()),
            ACTIVATION_GRAD_RMS: (batch.keys, (batch.scaled_sumsq / batch.samples).sqrt()),
        }


def norms(tensors: list[Tensor]) -> Tensor:
    """L2 norms of a list of tensors by one fused ``torch._foreach_norm``, stacked (float32)."""
    if not tensors:
        return torch.zeros(0)
    device = tensors[0].device
    return torch.stack([n.to(device, torch.float32) for n in torch._foreach_norm(tensors)])


class ParamGradNorm(Probe):
    """||p.grad||_2 of every parameter tensor that has a ``.grad`` at ``step()``."""

    name, site, quantities = PARAM_GRAD_NORM, "parameter", (PARAM_GRAD_NORM,)

    def values(self, batch: ParameterBatch) -> Values:
        return {PARAM_GRAD_NORM: (batch.grad_keys, norms(batch.grads))}


class WeightNorm(Probe):
    """||p||_2 of every parameter tensor at ``step()``."""

    name, site, quantities = WEIGHT_NORM, "parameter", (WEIGHT_NORM,)

    def values(self, batch: ParameterBatch) -> Values:
        return {WEIGHT_NORM: (batch.keys, norms(batch.params))}


class UpdateRatio(Probe):
    """||w_t - w_{t-1}|| / ||w_{t-1}||: w_t at this ``step()``, w_{t-1} at the previous one.

    Step 0 compares with the weights at ``__enter__``; NaN where ||w_{t-1}|| = 0 (undefined).
    """

    name, site, quantities = UPDATE_RATIO, "parameter", (UPDATE_RATIO,)
    keeps_snapshot = True

    def values(self, batch: ParameterBatch) -> Values:
        if batch.previous is None or not batch.params:
            return {}
        change = norms(torch._foreach_sub(batch.params, batch.previous))
        before = norms(batch.previous)
        ratio = torch.where(before > 0, change / before, float("nan"))
        return {UPDATE_RATIO: (batch.keys, ratio)}


class ChannelVariance(Probe):
    """Average channel variance and squared mean at every block boundary (forward)."""

    name, site = CHANNEL_VARIANCE, "signal"
    quantities = (CHANNEL_MEAN_SQ, CHANNEL_VARIANCE)

    def __init__(self, channel_axis: int | None = None) -> None:
        self.channel_axis = channel_axis

    def values(self, batch: ChannelBatch) -> Values:
        return {
            CHANNEL_MEAN_SQ: (batch.keys, batch.mean_sq),
            CHANNEL_VARIANCE: (batch.keys, batch.variance),
        }


class BranchVariance(Probe):
    """Average channel variance of F(x) at the end of every residual block's branch."""

    name, site, quantities = BRANCH_VARIANCE, "branch", (BRANCH_VARIANCE,)

    def __init__(self, channel_axis: int | None = None) -> None:
        self.channel_axis = channel_axis

    def values(self, batch: ChannelBatch) -> Values:
        return {BRANCH_VARIANCE: (batch.keys, batch.variance)}


class ShortcutShare(Probe):
    """||g_u J_S||, ||g_u J_F|| and the shortcut's share at every residual block (backward)."""

    name, site = SHORTCUT_GRAD_SHARE, "split"
    quantities = (SHORTCUT_GRAD_NORM, BRANCH_GRAD_NORM, SHORTCUT_GRAD_SHARE)

    def values(self, batch: SplitBatch) -> Values:
        shortcut, branch = batch.shortcut_sumsq.sqrt(), batch.branch_sumsq.sqrt()
        total = shortcut + branch
        share = torch.where(total > 0, shortcut / total, float("nan"))
        return {
            SHORTCUT_GRAD_NORM: (batch.keys, shortcut),
            BRANCH_GRAD_NORM: (batch.keys, branch),
            SHORTCUT_GRAD_SHARE: (batch.keys, share),
        }


def all_reduce_stats(
    responses: list[ResponseStats], boundaries: list[BoundaryStats], group=None
) -> None:
    """Merge per-layer statistics in place across torch.distributed ranks (same layer order).

    Responses: counts summed, mean = sum_r n_r mean_r / N, M2 = sum_r M2_r + sum_r n_r
    (mean_r - mean)^2 (one all_gather), min/max by one MAX all_reduce of (-min, max);
    boundaries: sums of squares and sample counts by one SUM all_reduce. No-op when
    torch.distributed is not available or not initialised.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    with_moments = [s for s in responses if s.mean is not None]
    if with_moments:
        device = with_moments[0].mean.device
        total, mean, m2 = gather_moments(
            torch.tensor([float(s.count) for s in with_moments], device=device),
            torch.stack([s.mean for s in with_moments]),
            torch.stack([s.m2 for s in with_moments]),
            group,
        )
        for i, stats in enumerate(with_moments):
            stats.mean, stats.m2 = mean[i].to(stats.mean.dtype), m2[i].to(stats.m2.dtype)
    with_extrema = [s for s in responses if s.low is not None]
    if with_extrema:
        extremes = torch.stack([torch.stack([-s.low, s.high]) for s in with_extrema])
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=group)
        for stats, (low, high) in zip(with_extrema, extremes, strict=True):
            stats.low, stats.high = -low, high
    if with_moments:
        for stats, count in zip(with_moments, total.tolist(), strict=True):
            stats.count = int(count)
    if boundaries:
        f64 = torch.float64
        sums = torch.stack(
            [
                torch.stack([s.sumsq for s in boundaries]).to(f64),
                torch.stack([s.scaled_sumsq for s in boundaries]).to(f64),
                torch.stack([s.sumsq.new_tensor(float(s.samples), dtype=f64) for s in boundaries]),
            ]
        )
        dist.all_reduce(sums, group=group)
        samples = sums[2].tolist()
        for i, stats in enumerate(boundaries):
            stats.sumsq = sums[0, i].to(stats.sumsq.dtype)
            stats.scaled_sumsq = sums[1, i].to(stats.sumsq.dtype)
            stats.samples = int(samples[i])


PROBES: dict[str, type[Probe]] = {
    cls.name: cls
    for cls in (
        ResponseStd,
        ResponseMean,
        ResponseAbsmax,
        ActivationGradNorm,
        ParamGradNorm,
        WeightNorm,
        UpdateRatio,
        ChannelVariance,
        BranchVariance,
        ShortcutShare,
    )
}
DEFAULT_PROBES = tuple(PROBES)
GIVEN_BY = {  # quantities measured by a probe of another name
    q: cls for cls in PROBES.values() for q in cls.quantities if q != cls.name
}


def resolve_probes(probes: Sequence[str | Probe] | str | None) -> list[Probe]:
    """Probe instances from names (see ``PROBES``) or instances; None means all of them."""
    if probes is None:
        probes = DEFAULT_PROBES
    if isinstance(probes, str | Probe):
        probes = [probes]
    resolved = []
    for probe in probes:
        if isinstance(probe, Probe):
            resolved.append(probe)
        elif probe in PROBES:
            resolved.append(PROBES[probe]())
        elif probe in GIVEN_BY:
            resolved.append(GIVEN_BY[probe]())
        else:
            also = "; ".join(f"{q} comes with {c.name}" for q, c in GIVEN_BY.items())
            raise UserInputError(
                f"unknown probe {probe!r}; available: {', '.join(PROBES)} ({also})"
            )
    unique = {type(p): p for p in resolved}
    return list(unique.values())
