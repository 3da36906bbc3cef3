"""Per-block and cumulative Jacobian spectra of a network, as a tidy frame.

For block k with input z_{k-1} (the input it really receives at the probe sample):
``J_H`` = dH/dz of a plain block; ``I+J_F`` = the whole residual block (for a
post-activation block relu(F + S), so identity-plus-branch only where relu passes and the
shortcut is the identity) and ``J_F`` = its branch alone; ``prod`` = the Jacobian of the map
from the network input (or the stem output) to the output of block k, i.e. the cumulative
product prod_l J_l that backprop multiplies by.

BatchNorm: a per-sample Jacobian needs eval-mode BN. By default (``bn="calibrate"``) a
*copy* of the model gets its running statistics re-estimated on the probe batch (cumulative
average, momentum=None) and is put in eval mode; ``bn="eval"`` keeps the model's own running
statistics (a trained model); ``bn="train"`` takes the train-mode map of the whole probe batch
(samples mix through the batch statistics; sample = -1 in the frame; small inputs only). The
user's model is never modified.

Exactness: the largest values converge fast and carry tight error bounds. The smallest are
Ritz values from a Krylov space: upper bounds on the true smallest that converge slowly
when the spectrum decays smoothly (rows say ``converged`` and give the bound). Note that a
post-activation block ends with relu, so J_H and I+J_F have a zero row per inactive output
unit: their true smallest singular value is 0 at almost every input; the cumulative ``prod``
from the input (3072 columns for CIFAR) is generically of full column rank. For exact
bottoms use ``method="dense"`` (forms each Jacobian; fine for small inputs or few depths).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..errors import UserInputError
from .cumulative import cumulative_singular_values
from .density import frobenius_norm
from .solvers import singular_values

BN_MODES = ("calibrate", "eval", "train")
COLUMNS = [
    "model", "depth", "block", "stage", "operator", "sample", "index", "sigma",
    "error", "method", "converged", "dim", "mean_sq_estimate",
]  # fmt: skip


def calibrated_copy(model: nn.Module, x: Tensor) -> nn.Module:
    """A deep copy of ``model`` in eval mode whose BN running statistics are the cumulative
    average over the batch ``x`` (reset, momentum=None, one train-mode forward, no grad).

    The user's model, its flags and the global RNG are untouched; the copy has
    ``requires_grad=False`` everywhere (Jacobians w.r.t. inputs only).
    """
    rng_state = torch.get_rng_state()
    try:
        return _prepare(copy.deepcopy(model), x, "calibrate")
    finally:
        torch.set_rng_state(rng_state)


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _prepare(twin: nn.Module, x: Tensor, bn: str) -> nn.Module:
    """Put a private copy in the requested BN mode (see the module docstring), no grads."""
    twin.requires_grad_(False)
    if bn == "calibrate":
        norms = [norm for norm in _batch_norms(twin) if norm.track_running_stats]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        if norms:
            twin.train()
            with torch.no_grad():
                twin(x)
    if bn == "train":
        for norm in _batch_norms(twin):  # batch statistics only: no in-place updates under vmap
            norm.track_running_stats = False
            norm.running_mean = norm.running_var = norm.num_batches_tracked = None
        return twin.train()
    return twin.eval()


def _zoo_structure(model: nn.Module) -> tuple[Callable, list[tuple[str, nn.Module]]]:
    if hasattr(model, "named_blocks") and hasattr(model, "forward_stem"):
        return model.forward_stem, list(model.named_blocks())
    raise UserInputError(
        f"{type(model).__name__} is not a gradflow zoo model: pass blocks=[(name, module), ...] "
        "(the blocks applied in sequence) and, if the input needs one, stem=<module or method "
        "of the model> that maps the input to the first block's input"
    )


def _resolve_depths(depths: str | Sequence[int], blocks: list[tuple[str, nn.Module]]) -> list[int]:
    count = len(blocks)
    if depths == "all":
        return list(range(1, count + 1))
    if depths == "auto":
        stages = [getattr(block, "stage", None) for _, block in blocks]
        ends = [k for k in range(1, count + 1) if k == count or stages[k] != stages[k - 1]]
        return sorted({1, *ends}) if None not in stages else sorted({1, (count + 1) // 2, count})
    chosen = sorted({int(depth) for depth in depths})
    if not chosen or chosen[0] < 1 or chosen[-1] > count:
        raise UserInputError(f"depths must lie in 1..{count} (or be 'auto'/'all'), got {depths!r}")
    return chosen


def _operators(block: nn.Module) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
    """(operator name, function of the block input) for one block."""
    if getattr(block, "kind", "plain") == "residual" and hasattr(block, "branch"):
        return [("I+J_F", block), ("J_F", block.branch)]
    return [("J_H", block)]


def _sequence(stem: Callable | None, modules: list[nn.Module]) -> Callable[[Tensor], Tensor]:
    def forward(z: Tensor) -> Tensor:
        if stem is not None:
            z = stem(z)
        for module in modules:
            z = module(z)
        return z

    return forward


def block_spectra(
    model: nn.Module,
    x: Tensor,
    k: int = 8,
    depths: str | Sequence[int] = "auto",
    samples: int = 2,
    *,
    which: str = "both",
    method: str = "auto",
    tol: float = 1e-2,
    max_matvecs: int = 128,
    operators: Sequence[str] = ("block", "prod"),
    prod_from: str = "input",
    bn: str = "calibrate",
    hutchinson: int = 4,
    blocks: Sequence[tuple[str, nn.Module]] | None = None,
    stem: Callable | None = None,
    model_name: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Singular values of every selected block's Jacobian and of the cumulative products.

    ``depths``: "auto" (first block and the last block of every stage), "all", or 1-based
    block numbers. ``operators``: "block" (J_H, or I+J_F and J_F) and/or "prod" (input, or
    stem output with ``prod_from="stem"``, to the output of block k). Each spectrum is
    ``singular_values(..., k, which, method, tol, max_matvecs)``; rows carry its error bound
    and ``converged`` flag, and ``mean_sq_estimate`` = Hutchinson ||J||_F^2 / dim from
    ``hutchinson`` Gaussian probes (0 to skip). For ``which="largest"`` the ``prod`` spectra
    of all depths come from one walk (``cumulative_singular_values``: forward cost linear in
    depth, one certificate block per depth; ``method="walk"`` asks for it explicitly);
    ``"smallest"``/``"both"`` solve each depth's map on its own (warm-started), whose cost
    grows with depth x depth: use a subset of depths for deep nets.
    """
    if method == "walk" and which != "largest":
        raise UserInputError(
            "method='walk' finds the largest values of every cumulative product; "
            "use which='largest', or method='auto' for the smallest"
        )
    if bn not in BN_MODES:
        raise UserInputError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
    if prod_from not in ("input", "stem"):
        raise UserInputError(f"prod_from must be 'input' or 'stem', got {prod_from!r}")
    unknown = set(operators) - {"block", "prod"}
    if unknown:
        raise UserInputError(f"operators must be 'block' and/or 'prod', got {sorted(unknown)}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise UserInputError("x must be a batch of probe inputs with a leading batch dimension")
    if blocks is None:
        stem_fn, named = _zoo_structure(model)
    else:
        stem_fn, named = stem, list(blocks)
    if not named:
        raise UserInputError("no blocks to analyse: blocks=[(name, module), ...] is empty")
    x = x.detach()
    rng_state = torch.get_rng_state()
    try:
        # Copy the model with the block/stem references, so that they point into the copy.
        twin, named, stem_fn = copy.deepcopy((model, named, stem_fn))
        _prepare(twin, x, bn)
    finally:
        torch.set_rng_state(rng_state)
    chosen = _resolve_depths(depths, named)
    probes = (
        [(-1, x)] if bn == "train" else [(i, x[i : i + 1]) for i in range(min(samples, len(x)))]
    )
    name = model_name or type(model).__name__
    rows = []
    for sample, point in probes:
        rows += _sample_rows(
            named, stem_fn, point, chosen, operators, prod_from,
            dict(k=k, which=which, method=method, tol=tol, max_matvecs=max_matvecs, seed=seed),
            hutchinson, labels=dict(model=name, sample=sample),
        )  # fmt: skip
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)
    return frame[COLUMNS]


def _sample_rows(named, stem_fn, point, chosen, operators, prod_from, options, hutchinson, labels):
    """Frames of every requested spectrum at one probe point."""
    with torch.no_grad():
        inputs = [stem_fn(point) if stem_fn is not None else point]
        for _, module in named[: max(chosen)]:
            inputs.append(module(inputs[-1]))
    frames = []

    def add(result, operator, depth, estimate):
        path, block = named[depth - 1]
        frame = result.frame(
            **labels, depth=depth, block=path, stage=getattr(block, "stage", np.nan),
            operator=operator, converged=result.converged, dim=result.dim,
            mean_sq_estimate=estimate,
        )  # fmt: skip
        frames.append(frame)

    def measure(fn, at, operator, depth, start=None):
        solver = {**options, "method": "auto" if options["method"] == "walk" else options["method"]}
        result = singular_values(fn, at, **solver, start=start)
        estimate = np.nan
        if hutchinson:
            estimate = frobenius_norm(fn, at, probes=hutchinson, seed=options["seed"]).mean_sq
        add(result, operator, depth, estimate)
        return result

    for depth in chosen:
        if "block" in operators:
            for operator, fn in _operators(named[depth - 1][1]):
                measure(fn, inputs[depth - 1], operator, depth)
    if "prod" not in operators:
        return frames
    start = point if prod_from == "input" else inputs[0]
    first = stem_fn if prod_from == "input" else None
    if options["which"] == "largest" and options["method"] in ("auto", "walk"):
        steps = [_sequence(first, [named[0][1]])] + [module for _, module in named[1 : max(chosen)]]
        walk = cumulative_singular_values(
            steps, start, k=options["k"], depths=chosen, tol=options["tol"],
            hutchinson=hutchinson if hutchinson >= 2 else 0, seed=options["seed"],
        )  # fmt: skip
        for depth, result in walk.items():
            add(result, "prod", depth, result.mean_sq_estimate)
        return frames
    warm = None  # the Ritz vectors of one depth start the next (same input space)
    for depth in chosen:
        modules = [module for _, module in named[:depth]]
        warm = measure(_sequence(first, modules), start, "prod", depth, start=warm).vectors
    return frames


def summarize_spectra(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, operator, depth, sample): largest, smallest, median, log10_condition, mean_sq.

    ``largest``/``smallest`` are the extreme computed values: exact (within ``error``) when
    the top/bottom ranks were computed (``has_top``/``has_bottom``). ``median`` and
    ``mean_sq`` are exact only when the whole spectrum is in the frame (``complete``), else
    NaN; ``mean_sq_estimate`` is Hutchinson's ||J||_F^2 / dim (an unbiased estimate).
    """
    keys = [c for c in ("model", "operator", "depth", "block", "sample") if c in frame]

    def one(group: pd.DataFrame) -> pd.Series:
        sigma, dim = group["sigma"].to_numpy(), int(group["dim"].iloc[0])
        complete = len(sigma) == dim
        largest, smallest = sigma.max(), sigma.min()
        return pd.Series(
            {
                "largest": largest,
                "smallest": smallest,
                "log10_condition": np.log10(largest / smallest) if smallest > 0 else np.inf,
                "median": np.median(sigma) if complete else np.nan,
                "mean_sq": np.mean(sigma**2) if complete else np.nan,
                "mean_sq_estimate": group["mean_sq_estimate"].iloc[0],
                "has_top": bool((group["index"] == 0).any()),
                "has_bottom": bool((group["index"] == dim - 1).any()),
                "complete": complete,
                "converged": bool(group["converged"].all()),
                "max_relative_error": float((group["error"] / group["sigma"]).max()),
            }
        )

    return frame.groupby(keys, sort=False).apply(one, include_groups=False).reset_index()
