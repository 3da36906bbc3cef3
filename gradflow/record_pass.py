"""``record(model, x, y)``: one forward + backward of a batch measured by a ``Recorder``,
fed in micro-batches when the batch's saved activations would not fit (``gradflow.memory``),
that leaves the model exactly as it found it (parameters, buffers, ``.grad``, RNG)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from .errors import UserInputError
from .finite import check_input
from .inputs import (
    Inputs,
    batch_size,
    call_model,
    first_float_tensor,
    normalize,
    replace_first_float,
    select_samples,
)
from .losses import resolve_loss
from .memory import release_free_memory
from .probes import DEFAULT_PROBES, UPDATE_RATIO, Probe
from .record import Recorder
from .sites import LayerSpec, is_zoo, unwrap
from .state import preserved_buffers, preserved_rng
from .structure import NoBlocksError, layout_inputs, structure

__all__ = ["micro_batches", "record", "slice_targets"]


def record(
    model: nn.Module,
    x: Inputs,
    y: Tensor | None = None,
    loss_fn: Callable | str | None = None,
    *,
    probes: Sequence[str | Probe] | str | None = None,
    layers: LayerSpec | None = None,
    boundaries: LayerSpec | None = None,
    label: str | None = None,
    on_nonfinite: str = "warn",
    loss_reduction: str = "mean",
    micro_batch: int | None = None,
) -> pd.DataFrame:
    """One forward + backward of ``model`` on (x, y) measured by a Recorder; model untouched.

    Runs in the model's current mode (train mode: BN uses batch statistics, as in training),
    then restores BN running statistics, the global RNG state and leaves ``.grad`` alone
    (parameter gradients come from ``torch.autograd.grad``). ``x``: a tensor, a tuple of
    positional arguments or a dict of keyword arguments. Loss: ``loss_fn(output, y)`` (a
    callable or a name of ``gradflow.losses.LOSSES``), else ``gradflow.losses.default_loss``
    (cross-entropy, language-model loss, MSE by output and target type). Without y and
    loss_fn only forward quantities are recorded (no loss is made up from the output).
    Outside the zoo the blocks come from ``gradflow.structure`` (found before the pass).
    Default probes: all but ``update_ratio`` (a single pass has no update).

    ``micro_batch``: feed the batch in slices of this many samples and close one step, so
    that only one slice's activations are kept for the backward (``gradflow.memory`` picks
    the size). Each slice's loss is weighted by its share of the batch (a mean-reduced loss
    over the whole batch), so every number equals the full-batch one up to float rounding
    for models whose samples do not interact; layers with batch statistics (BatchNorm in
    train mode) normalise each slice with its own statistics, as one device of a
    data-parallel run without SyncBN does.
    """
    if probes is None:
        probes = [name for name in DEFAULT_PROBES if name != UPDATE_RATIO]
    x = normalize(x)
    check_input(first_float_tensor(x), on_nonfinite)
    module = unwrap(model)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    backward = y is not None or loss_fn is not None
    found = None
    if layers is None and boundaries is None and not is_zoo(module):
        try:
            # two samples: the blocks do not depend on the batch size, a full batch would
            # cost two more forwards (the forward on x itself is checked by the pass below)
            found = structure(module, layout_inputs(x))
        except NoBlocksError:
            found = None  # the container boundaries of gradflow.sites
    recorder = Recorder(
        model,
        probes,
        layers,
        boundaries=boundaries,
        label=label,
        on_nonfinite=on_nonfinite,
        loss_reduction=loss_reduction,
        structure=found,
    )
    total = batch_size(x)
    slices = micro_batches(total, micro_batch)
    loss_of = resolve_loss(loss_fn)
    with preserved_rng(), preserved_buffers(module), torch.set_grad_enabled(backward), recorder:
        recorder._grads_override = {}  # never read the user's .grad (or write it)
        summed: dict[str, Tensor] = {}
        for part in slices:
            xs, ys = (
                (x, y)
                if len(slices) == 1
                else (select_samples(x, part), slice_targets(y, part, total))
            )
            weight = (part.stop - part.start) / total if recorder.mean_reduced else 1.0
            grads = _one_pass(model, xs, ys, loss_of, named, backward, weight)
            release_free_memory()  # the slice's activations: not resident while the next runs
            for name, grad in grads.items():
                summed[name] = summed[name] + grad if name in summed else grad
        if len(slices) > 1 and recorder.mean_reduced:
            _full_batch_scale(recorder, total)
        recorder._grads_override = summed
        recorder.step()
    return recorder.frame()


def micro_batches(total: int, size: int | None) -> list[slice]:
    """Consecutive slices of at most ``size`` samples covering ``range(total)`` (one if None)."""
    if size is not None and size < 1:
        raise UserInputError(f"micro_batch must be a positive number of samples, got {size}")
    size = total if size is None else min(size, total)
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def slice_targets(y, part: slice, total: int):
    """The targets of the samples ``part``: tensors with the batch as leading size are cut."""
    if isinstance(y, Tensor) and y.dim() >= 1 and y.shape[0] == total:
        return y[part]
    if isinstance(y, (tuple, list, dict)):
        return select_samples(y, part) if y else y
    return y


def _one_pass(model, x: Inputs, y, loss_of, named, backward: bool, weight: float) -> dict:
    """Forward (+ backward of ``weight`` x the loss) of one slice; its parameter gradients."""
    inputs, first = x, first_float_tensor(x)
    if backward and first is not None and not first.requires_grad:
        first = first.detach().requires_grad_(True)  # so the first block's input has dL/dz
        inputs = replace_first_float(x, first)
    output = call_model(model, inputs)
    if not backward:
        return {}
    loss = loss_of(output, y)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise UserInputError("loss_fn must return a scalar tensor")
    extra = [first] if first is not None and first.requires_grad else []
    sources = [p for _, p in named] + extra
    if not (loss.requires_grad and sources):
        return {}
    grads = torch.autograd.grad(
        loss * weight if weight != 1.0 else loss, sources, allow_unused=True
    )
    return {n: g for (n, _), g in zip(named, grads, strict=False) if g is not None}


def _full_batch_scale(recorder: Recorder, total: int) -> None:
    """Per-sample gradients of a mean loss over ``total`` samples fed in slices: sample i's own
    loss gradient is ``total`` x dL/dz_i (the Recorder's per-batch rule would use the slice)."""
    for stats in recorder._boundary.values():
        stats.scaled_sumsq = stats.sumsq * total**2
