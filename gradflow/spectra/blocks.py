"""Per-block and cumulative Jacobian spectra of a network, as a tidy frame.

For block k with input z_{k-1} (the input it really receives at the probe sample):
``J_H`` = dH/dz of a plain block; ``I+J_F`` = the whole residual block (for a
post-activation block relu(F + S), so identity-plus-branch only where relu passes and the
shortcut is the identity) and ``J_F`` = its branch alone (a post-norm block N(x + F(x)), as
in post-LN transformers: ``J_H`` of the whole block, with ``I+J_F`` of its pre-norm sum and
``J_F`` where ``gradflow.structure`` finds them exactly); ``prod`` = the Jacobian of the map
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
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..errors import UserInputError
from ..inputs import (
    Inputs,
    batch_size,
    call_model,
    detach,
    first_float_tensor,
    forward_error,
    normalize,
    select_samples,
)
from ..private import math_kernels, private_copy, strip_hooks
from ..state import preserved_rng
from ..structure import Structure, build
from ..trace import capture
from .cumulative import cumulative_singular_values
from .density import frobenius_norm
from .frozen import freeze_batch_norms
from .solvers import DENSE_AUTO_LIMIT, route, singular_values

BN_MODES = ("calibrate", "eval", "train")
DEFAULT_MATVECS = 128  # block_spectra's max_matvecs
WALK_ROUNDS = 30  # the walk's expansion rounds per depth at max_matvecs=DEFAULT_MATVECS
COLUMNS = [
    "model", "depth", "block", "stage", "operator", "sample", "index", "sigma",
    "error", "method", "converged", "dim", "mean_sq_estimate", "prod_from",
]  # fmt: skip


def calibrated_copy(model: nn.Module, x: Inputs) -> nn.Module:
    """A private copy of ``model`` in eval mode whose BN running statistics are the cumulative
    average over the batch ``x`` (reset, momentum=None, one train-mode forward, no grad).

    The user's model, its flags and the global RNG are untouched; the copy carries none of
    the user's hooks and has ``requires_grad=False`` everywhere (Jacobians w.r.t. inputs only).
    """
    with preserved_rng(), math_kernels(model):
        return _prepare(private_copy(model), detach(normalize(x)), "calibrate")


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _prepare(twin: nn.Module, x: Inputs, bn: str) -> nn.Module:
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
                call_model(twin, x)
    if bn == "train":
        for norm in _batch_norms(twin):  # batch statistics only: no in-place updates under vmap
            norm.track_running_stats = False
            norm.running_mean = norm.running_var = norm.num_batches_tracked = None
        return twin.train()
    return twin.eval()


def _private_structure(
    model, x: Inputs, bn: str, blocks, stem, traced: Inputs | None = None
) -> Structure:
    """The prepared private copy (hooks stripped, BN mode ``bn``, calibrated on x) and its
    structure on ``traced`` (default x). The structure's trace keeps every block's input and
    output of what it is built on: pass only the samples that will be probed."""
    traced = x if traced is None else traced
    with preserved_rng():
        twin, blocks, stem = copy.deepcopy((model, None if blocks is None else list(blocks), stem))
    strip_hooks(twin)
    with preserved_rng(), math_kernels(twin):
        try:
            _prepare(twin, x, bn)
        except Exception as error:  # the user's forward fails on x: say so before any work
            raise forward_error(type(model).__name__, x, error) from error
        return build(twin, traced, blocks=blocks, stem=stem)


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


def _sequence(stem: Callable | None, modules: list[nn.Module]) -> Callable[[Tensor], Tensor]:
    def forward(z: Tensor) -> Tensor:
        if stem is not None:
            z = stem(z)
        for module in modules:
            z = module(z)
        return z

    return forward


@dataclass
class _Point:
    """Everything the spectra of one probe sample need: block inputs, operators, products."""

    inputs: list[Tensor]  # z_0 (first block input), z_1, ...: the input block k receives
    operators: Callable[[int], list[tuple[str, Callable]]]  # depth -> (operator, fn)
    prod: Callable[[int], Callable]  # depth -> fn of ``start`` to block k's output
    start: Tensor
    steps: list[Callable] | None  # one function per block for the walk (chains only)


def _chain_point(st: Structure, point: Tensor, depth: int, prod_from: str) -> _Point:
    """Blocks applied one after another from ``stem(point)`` (zoo models: named_blocks)."""
    modules = [b.module for b in st.blocks]
    stem_fn = st.stem_override
    with torch.no_grad():
        inputs = [stem_fn(point) if stem_fn is not None else point]
        for module in modules[:depth]:
            inputs.append(module(inputs[-1]))
    first = stem_fn if prod_from == "input" else None

    def operators(k: int) -> list[tuple[str, Callable]]:
        block = st.blocks[k - 1]
        if block.kind == "residual" and block.branch is not None:
            return [("I+J_F", block.module), ("J_F", block.branch)]
        return [("J_H", block.module)]

    steps = [_sequence(first, [modules[0]]), *modules[1:depth]]
    start = point if prod_from == "input" else inputs[0]
    return _Point(inputs, operators, lambda k: _sequence(first, modules[:k]), start, steps)


def _traced_point(st: Structure, point: Inputs, depth: int, prod_from: str) -> _Point:
    """Any model: block inputs and arguments recorded in one forward pass of the sample."""
    modules = [b.module for b in st.blocks]
    trace = capture(st.model, point, modules[:depth], stop="output")

    def operators(k: int) -> list[tuple[str, Callable]]:
        return st.operators(k - 1, trace)

    def prod(k: int) -> Callable[[Tensor], Tensor]:
        return st.prod_fn(k, point, prod_from)

    start = first_float_tensor(point) if prod_from == "input" else trace.inputs[0]
    calls = trace.calls
    fed = all(calls[i].input is calls[i - 1].output for i in range(1, len(calls)))
    steps = None  # the walk needs block l fed by block l - 1's output (transformers, ResNets)
    if fed:
        first = prod(1) if prod_from == "input" else st.block_fn(0, trace)
        steps = [first, *(st.block_fn(i, trace) for i in range(1, depth))]
    return _Point(trace.inputs, operators, prod, start, steps)


def block_spectra(
    model: nn.Module,
    x: Inputs,
    k: int = 8,
    depths: str | Sequence[int] = "auto",
    samples: int = 2,
    *,
    which: str = "both",
    method: str = "auto",
    tol: float = 1e-2,
    max_matvecs: int = DEFAULT_MATVECS,
    operators: Sequence[str] = ("block", "prod"),
    prod_from: str = "input",
    bn: str = "calibrate",
    hutchinson: int = 4,
    blocks: Sequence[tuple[str, nn.Module] | str] | None = None,
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
    ``hutchinson`` Gaussian probes (0 to skip). For ``which="largest"`` or ``"both"`` the
    ``prod`` spectra of all depths come from one walk (``cumulative_singular_values``: forward
    cost linear in depth, one certificate block per depth, expansion rounds per depth
    ``WALK_ROUNDS`` scaled by max_matvecs / 128; ``method="walk"`` asks for it explicitly, top
    only) wherever block l is fed by block l - 1; ``"smallest"`` (and models
    whose blocks are not a chain) solve each depth's map on its own (warm-started), whose cost
    grows with depth x depth: use a subset of depths for deep nets. Bottom values (``"both"``)
    are the smallest Ritz values of the Krylov space (or walk basis) that certified the top:
    upper bounds with honest error bounds, ``converged`` only where the bound meets ``tol``;
    exact (dense) where min(m, n) <= 512. Any dense route is costed before it starts and
    refused (UserInputError) when too large, e.g. a k covering a 16384-dim map.

    Any model: ``x`` is a tensor, a tuple of positional arguments or a dict of keyword
    arguments; the blocks, their kind and J_F route come from ``gradflow.structure`` (or
    ``blocks=``/``stem=``). Each block's Jacobian is taken w.r.t. its input with its other
    arguments (masks, skip tensors) held at their values for the sample. ``prod`` starts at
    the first floating-point input, or at the first block's input (the embedding output of a
    token model): the ``prod_from`` column says which ("input" or "stem"), on every row. The
    private copy runs with the math kernels (``gradflow.private.math_kernels``;
    ``frame.attrs["jacobian_route"]``).
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
    x = detach(normalize(x))
    count = batch_size(x)
    if count < 1:
        raise UserInputError("x must be a batch of probe inputs with a leading batch dimension")
    if first_float_tensor(x) is None and prod_from == "input":
        prod_from = "stem"  # token inputs: products start at the embedding output
    # BN is calibrated on the whole batch; the structure is traced on the probed samples only
    probed = x if bn == "train" else select_samples(x, slice(0, min(samples, count)))
    st = _private_structure(model, x, bn, blocks, stem, traced=probed)
    chosen = _resolve_depths(depths, [(b.path, b) for b in st.blocks])
    chain = _is_chain(st, probed, stem)
    if bn != "train":  # a conv-fed norm folds into its conv (no new op); the other norms
        # become FrozenNorm only on chains, which read no traced addition (J_F routes)
        freeze_batch_norms(st.model, select_samples(x, 0), replace_rest=chain)
    probes = [(i, select_samples(probed, i)) for i in range(batch_size(probed))]
    if bn == "train":
        probes = [(-1, x)]
    name = model_name or type(model).__name__
    options = dict(k=k, which=which, method=method, tol=tol, max_matvecs=max_matvecs, seed=seed)
    rows = []
    with preserved_rng(), math_kernels(st.model) as route:
        for sample, point in probes:
            make = _chain_point if chain else _traced_point
            at = make(st, point, max(chosen), prod_from)
            rows += _sample_rows(
                st,
                at,
                chosen,
                operators,
                options,
                hutchinson,
                labels=dict(model=name, sample=sample),
            )
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)
    frame["prod_from"] = prod_from  # where every ``prod`` of this model starts (docstring)
    frame = frame[COLUMNS]
    frame.attrs.update(prod_from=prod_from, jacobian_route=route)
    return frame


def check_spectra_cost(
    model: nn.Module,
    x: Inputs,
    k: int = 8,
    depths: str | Sequence[int] = "auto",
    *,
    which: str = "both",
    method: str = "auto",
    prod_from: str = "input",
    blocks: Sequence[tuple[str, nn.Module] | str] | None = None,
    stem: Callable | None = None,
) -> None:
    """UserInputError, after one forward pass of one sample, when ``block_spectra`` with these
    options would take a dense route that ``solvers.route`` refuses (e.g. ``k=100000`` on a
    16384-dim block): callers check this before any long work (``gradflow analyze``)."""
    point = select_samples(detach(normalize(x)), 0)
    st = _private_structure(model, point, "eval", blocks, stem)
    chosen = _resolve_depths(depths, [(b.path, b) for b in st.blocks])
    modules = [b.module for b in st.blocks]
    with preserved_rng(), torch.no_grad():
        trace = capture(st.model, point, modules[: max(chosen)], stop="output")
    start = first_float_tensor(point)
    start = start if start is not None and prod_from == "input" else trace.inputs[0]
    for depth in chosen:
        call = trace.calls[depth - 1]
        output = call.output
        if output is None:
            continue
        for columns in (call.input, start):
            route((output.numel(), columns.numel()), output.dtype, k, which, method)


def _is_chain(st: Structure, x: Inputs, stem: Callable | None) -> bool:
    """True when the blocks are applied one after another to stem(x): zoo models, a user's
    ``stem=``, or blocks whose inputs are x and then each previous block's output."""
    if st.source == "named_blocks" and st.stem_override is not None:
        return True
    if not isinstance(x, Tensor) or st.source != "user":
        return False
    if stem is not None:
        return True
    calls = st.trace.calls
    return calls[0].input is x and all(
        calls[i].input is calls[i - 1].output for i in range(1, len(calls))
    )


def _sample_rows(st: Structure, at: _Point, chosen, operators, options, hutchinson, labels):
    """Frames of every requested spectrum at one probe point."""
    frames = []

    def add(result, operator, depth, estimate):
        block = st.blocks[depth - 1]
        frame = result.frame(
            **labels, depth=depth, block=block.path,
            stage=block.stage if block.stage is not None else np.nan,
            operator=operator, converged=result.converged, dim=result.dim,
            mean_sq_estimate=estimate,
        )  # fmt: skip
        frames.append(frame)

    def measure(fn, point, operator, depth, start=None):
        solver = {**options, "method": "auto" if options["method"] == "walk" else options["method"]}
        result = singular_values(fn, point, **solver, start=start, stop_at_top=True)
        estimate = np.nan
        if hutchinson:
            estimate = frobenius_norm(fn, point, probes=hutchinson, seed=options["seed"]).mean_sq
        add(result, operator, depth, estimate)
        return result

    for depth in chosen:
        if "block" in operators:
            for operator, fn in at.operators(depth):
                measure(fn, at.inputs[depth - 1], operator, depth)
    if "prod" not in operators:
        return frames
    which = options["which"]
    walk_ok = which in ("largest", "both") and options["method"] in ("auto", "walk")
    if walk_ok and at.steps is not None and not _dense_is_cheap(at.start, options):
        walk = cumulative_singular_values(
            at.steps, at.start, k=options["k"], depths=chosen, tol=options["tol"],
            hutchinson=hutchinson if hutchinson >= 2 else 0, seed=options["seed"],
            bottom=options["k"] if which == "both" else 0,
            max_rounds=max(1, round(WALK_ROUNDS * options["max_matvecs"] / DEFAULT_MATVECS)),
        )  # fmt: skip
        for depth, result in walk.items():
            add(result, "prod", depth, result.mean_sq_estimate)
        return frames
    warm = None  # the Ritz vectors of one depth start the next (same input space)
    for depth in chosen:
        warm = measure(at.prod(depth), at.start, "prod", depth, start=warm).vectors
    return frames


def _dense_is_cheap(start: Tensor, options: dict) -> bool:
    """True where method="auto" would form each prod map densely (min(m, n) <= n small): the
    exact bottom values are then cheaper than the walk's Ritz bounds (e.g. MLPs on 5 inputs)."""
    return (
        options["method"] == "auto"
        and options["which"] != "largest"
        and (start.numel() <= DENSE_AUTO_LIMIT)
    )


def summarize_spectra(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, operator, depth, sample): largest, smallest, median, log10_condition, mean_sq.

    ``largest``/``smallest`` are the extreme computed values: exact (within ``error``) when
    the top/bottom ranks were computed (``has_top``/``has_bottom``). ``median`` and
    ``mean_sq`` are exact only when the whole spectrum is in the frame (``complete``), else
    NaN; ``mean_sq_estimate`` is Hutchinson's ||J||_F^2 / dim (an unbiased estimate).
    """
    keys = [c for c in ("model", "operator", "depth", "block", "sample", "prod_from") if c in frame]

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
