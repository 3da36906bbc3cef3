"""Curvature of the loss: Hessian eigenvalues, trace and spectral density, per block and whole.

``hessian_spectra(model, inputs, targets)`` measures H = d^2 L / d theta^2 of the mean loss L
over one or several batches, for the whole parameter vector and for the diagonal block
H_bb = d^2 L / d theta_b^2 of each block's parameters (the rest held fixed): the top-k
eigenvalues (Lanczos on Hessian-vector products, each with a certified residual bound), the
trace (Hutchinson, deflated by the Lanczos basis, with its standard error) and the spectral
density (stochastic Lanczos quadrature, Gaussian-broadened onto a grid). PyHessian (Yao et
al. 2020) gives the same quantities for the whole vector only, by power iteration.

Hessian-vector products: double backward through the gradient's graph on a private copy of
the model (the user's model, its buffers, flags, .grad and the global RNG are untouched).
With one batch the graph is built once and reused by every product; with several batches it
is rebuilt per batch and block of vectors, so memory stays O(parameters) + one graph, and
H v = sum_b n_b H_b v / sum_b n_b is accumulated product by product.

BatchNorm: ``bn="train"`` (default) measures the training objective, BN normalising with the
statistics of each batch (so the batch's samples interact, as in training); ``bn="eval"``
the network with its running statistics (the function used at test time).
"""

from __future__ import annotations

import copy
import fnmatch
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs import HESSIAN_BN_MODES
from ..errors import UserInputError, check_choice
from ..state import preserved_rng
from .density import lanczos_tridiagonal, quadrature_nodes
from .operators import probe_generator
from .symmetric import SymmetricOperator, eigenvalues, trace

BN_MODES = HESSIAN_BN_MODES  # train: batch statistics; eval: running statistics
QUANTITIES = ("eigenvalue", "trace", "density")
NETWORK = "all"  # the block name of the whole parameter vector
COLUMNS = [
    "model", "block", "depth", "kind", "params", "bn", "quantity", "index", "grid", "value",
    "error", "converged", "matvecs", "seconds",
]  # fmt: skip
BlockSpec = (
    str | Sequence[tuple[str, nn.Module]] | Sequence[str] | Mapping[str, Sequence[str]] | None
)
LossFunction = Callable[..., Tensor]


@dataclass
class Batch:
    """One batch: the model's positional and keyword inputs, targets and sample count."""

    args: tuple
    kwargs: dict
    targets: object
    size: int


def _as_batch(inputs: object, targets: object) -> Batch:
    if isinstance(inputs, Tensor):
        args, kwargs = (inputs,), {}
    elif isinstance(inputs, tuple):
        args, kwargs = inputs, {}
    elif isinstance(inputs, dict):
        args, kwargs = (), inputs
    else:
        raise UserInputError(
            "inputs must be a tensor, a tuple of positional inputs, a dict of keyword inputs, "
            f"or a list of (inputs, targets) batches; got {type(inputs).__name__}"
        )
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, Tensor) and t.ndim]
    if not tensors:
        raise UserInputError("inputs hold no tensor with a batch dimension")
    return Batch(args, kwargs, targets, int(tensors[0].shape[0]))


def _batches(inputs: object, targets: object) -> list[Batch]:
    """One batch, or a list of (inputs, targets) pairs (targets must then be None)."""
    if isinstance(inputs, list):
        if targets is not None:
            raise UserInputError("with a list of (inputs, targets) batches, leave targets=None")
        if not inputs or not all(isinstance(b, tuple | list) and len(b) == 2 for b in inputs):
            raise UserInputError("a list of batches must hold (inputs, targets) pairs")
        return [_as_batch(x, y) for x, y in inputs]
    return [_as_batch(inputs, targets)]


def _hook_free_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without any of the user's module or tensor hooks."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for name, value in list(vars(module).items()):
            if "hooks" in name and isinstance(value, dict):
                setattr(module, name, OrderedDict())
    for param in twin.parameters():
        for name in ("_backward_hooks", "_post_accumulate_grad_hooks"):
            if getattr(param, name, None):
                setattr(param, name, OrderedDict())
    return twin


class LossSurface:
    """The mean loss over ``batches`` as a function of a private copy's parameters, with the
    gradient graphs that Hessian-vector products differentiate (module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        batches: list[Batch],
        loss_fn: LossFunction,
        bn: str = "train",
        *,
        seed: int = 0,
        cache: bool | None = None,
    ) -> None:
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.names:
            raise UserInputError("the model has no parameter with requires_grad=True")
        self.twin = _hook_free_copy(model)
        self.twin.requires_grad_(False)
        self.twin.train(bn == "train")
        params = dict(self.twin.named_parameters())
        self.params = [params[name].requires_grad_(True) for name in self.names]
        self.batches, self.loss_fn, self.seed = batches, loss_fn, seed
        self.total = sum(batch.size for batch in batches)
        self.cache = len(batches) == 1 if cache is None else cache
        self._graphs: dict[int, tuple[Tensor, list[Tensor | None]]] = {}
        self.dtype = self.params[0].dtype

    def _loss(self, batch: Batch, index: int) -> Tensor:
        torch.manual_seed(self.seed + index)  # the same dropout masks in every product
        outputs = self.twin(*batch.args, **batch.kwargs)
        if batch.targets is None:
            loss = self.loss_fn(outputs)
        else:
            loss = self.loss_fn(outputs, batch.targets)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise UserInputError("loss_fn must return a scalar tensor (the mean loss)")
        if not torch.isfinite(loss):
            raise UserInputError(f"the loss is {float(loss)} on batch {index}: no Hessian there")
        return loss.reshape(())

    def graph(self, index: int) -> tuple[Tensor, list[Tensor | None]]:
        """(loss, gradient with create_graph) of batch ``index``, cached if ``cache``."""
        if index in self._graphs:
            return self._graphs[index]
        loss = self._loss(self.batches[index], index)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        grads = [g if g is not None and g.requires_grad else None for g in grads]
        if self.cache:
            self._graphs[index] = (loss, grads)
        return loss, grads

    def hessian_matmat(self, positions: list[int], vectors: Tensor) -> Tensor:
        """Rows of H_SS V for the parameters at ``positions`` (S), V of shape (p, dim_S)."""
        shapes = [self.params[i].shape for i in positions]
        sizes = [int(np.prod(shape)) for shape in shapes]
        out = torch.zeros_like(vectors)
        for index, batch in enumerate(self.batches):
            _, grads = self.graph(index)
            live = [j for j, i in enumerate(positions) if grads[i] is not None]
            if not live:
                continue
            outputs = [grads[positions[j]] for j in live]
            inputs = [self.params[i] for i in positions]
            for row, vector in enumerate(vectors):
                pieces = vector.split(sizes)
                cotangents = [pieces[j].reshape(shapes[j]) for j in live]
                products = torch.autograd.grad(
                    outputs, inputs, cotangents, retain_graph=True, allow_unused=True
                )
                flat = [
                    torch.zeros(size, dtype=self.dtype) if p is None else p.reshape(-1)
                    for p, size in zip(products, sizes, strict=True)
                ]
                out[row] += torch.cat(flat).detach() * (batch.size / self.total)
        return out

    def operator(self, names: Sequence[str]) -> SymmetricOperator:
        """The diagonal block H_SS of the parameters ``names`` as a symmetric operator."""
        index = {name: i for i, name in enumerate(self.names)}
        positions = [index[name] for name in names]
        dim = sum(self.params[i].numel() for i in positions)
        return SymmetricOperator(
            lambda vectors: self.hessian_matmat(positions, vectors), dim, self.dtype
        )


# ----------------------------------------------------------------------------- blocks
@dataclass
class ParameterBlock:
    """A named group of parameters whose diagonal Hessian block is measured."""

    name: str
    names: list[str]
    depth: int
    kind: str


def _module_names(model: nn.Module, module: nn.Module, label: str) -> list[str]:
    for prefix, candidate in model.named_modules():
        if candidate is module:
            return [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()]
    raise UserInputError(f"block {label!r} is not a submodule of the model")


def _default_blocks(model: nn.Module) -> list[tuple[str, list[str], str]]:
    """Zoo models: stem, every block, head (all remaining parameters: fc, head.bn); other
    models: each top-level child with parameters (``gf.structure`` can replace this)."""
    if hasattr(model, "named_blocks") and hasattr(model, "stem"):
        groups = [("stem", _module_names(model, model.stem, "stem"), "other")]
        for path, block in model.named_blocks():
            groups.append(
                (path, _module_names(model, block, path), getattr(block, "kind", "other"))
            )
        used = {name for _, names, _ in groups for name in names}
        rest = [n for n, _ in model.named_parameters() if n not in used]
        return [*groups, ("head", rest, "other")]
    return [
        (name, _module_names(model, child, name), "other")
        for name, child in model.named_children()
        if any(True for _ in child.parameters())
    ]


def resolve_blocks(
    model: nn.Module, blocks: BlockSpec, measured: list[str]
) -> list[ParameterBlock]:
    """The parameter blocks asked for: "all" (see ``_default_blocks``), None (whole net only),
    a list of (name, module) pairs, a list of parameter-name globs (one block each), or a
    dict of block name -> parameter names (e.g. from ``gf.structure``'s blocks)."""
    if blocks is None:
        return []
    if isinstance(blocks, Mapping):
        groups = [(str(name), list(names), "other") for name, names in blocks.items()]
    elif blocks == "all":
        groups = _default_blocks(model)
    elif isinstance(blocks, str):
        raise UserInputError(f"blocks must be 'all', None or a list, got {blocks!r}")
    elif all(isinstance(b, str) for b in blocks):
        everything = [n for n, _ in model.named_parameters()]
        groups = [(glob, fnmatch.filter(everything, glob), "other") for glob in blocks]
    elif all(isinstance(b, tuple | list) and len(b) == 2 for b in blocks):
        groups = [
            (str(name), _module_names(model, module, str(name)), getattr(module, "kind", "other"))
            for name, module in blocks
        ]
    else:
        raise UserInputError("blocks must be a list of (name, module) pairs or of name globs")
    chosen = set(measured)
    resolved = []
    for depth, (name, names, kind) in enumerate(groups, start=1):
        names = [n for n in names if n in chosen]
        if not names and not isinstance(blocks, str):
            raise UserInputError(f"block {name!r} matches no trainable parameter")
        if names:
            resolved.append(ParameterBlock(name, names, depth, kind))
    return resolved


# ----------------------------------------------------------------------------- measuring
def broadened_density(nodes: pd.DataFrame, points: int = 201, width: float = 0.01) -> pd.DataFrame:
    """SLQ nodes (``node, weight``) as a density on a grid: sum_j w_j N(t; node_j, s^2) with
    s = ``width`` * (node range), the grid spanning the nodes +- 4 s; integrates to 1."""
    values, weights = nodes["node"].to_numpy(), nodes["weight"].to_numpy()
    low, high = float(values.min()), float(values.max())
    sigma = max(width * (high - low), 1e-12 * max(abs(low), abs(high), 1.0))
    grid = np.linspace(low - 4 * sigma, high + 4 * sigma, points)
    kernel = np.exp(-0.5 * ((grid[:, None] - values[None, :]) / sigma) ** 2)
    density = kernel @ weights / (sigma * np.sqrt(2 * np.pi) * weights.sum())
    return pd.DataFrame({"grid": grid, "density": density})


@dataclass
class Budget:
    """How much work each measured operator gets (see ``hessian_spectra``)."""

    k: int
    tol: float
    max_matvecs: int
    block_size: int
    trace_probes: int
    density_steps: int
    density_probes: int
    seed: int


def _measure(operator: SymmetricOperator, quantities: Sequence[str], budget: Budget) -> list[dict]:
    """Rows (without labels) of one operator: eigenvalues, trace and density as asked."""
    started = time.perf_counter()
    rows: list[dict] = []
    steps = min(budget.density_steps, operator.dim) if "density" in quantities else 0
    result = eigenvalues(
        operator, min(budget.k, operator.dim), tol=budget.tol, block_size=budget.block_size,
        max_matvecs=max(budget.max_matvecs, steps), min_matvecs=steps, seed=budget.seed,
    )  # fmt: skip
    if "eigenvalue" in quantities:
        for rank, value, error in zip(result.indices, result.values, result.errors, strict=True):
            rows.append({"quantity": "eigenvalue", "index": int(rank), "value": float(value),
                         "error": float(error), "converged": result.converged,
                         "matvecs": result.matvecs})  # fmt: skip
    if "trace" in quantities:
        estimate = trace(operator, budget.trace_probes, basis=result.basis,
                         projected_trace=result.projected_trace, seed=budget.seed)  # fmt: skip
        rows.append({"quantity": "trace", "value": estimate.value, "error": estimate.std_error,
                     "converged": True, "matvecs": estimate.matvecs})  # fmt: skip
    if "density" in quantities:
        nodes = [result.quadrature()]
        if budget.density_probes > 1:
            generator = probe_generator(budget.seed + 2)
            start = torch.randn(budget.density_probes - 1, operator.dim, generator=generator,
                                dtype=operator.dtype)  # fmt: skip
            extra = quadrature_nodes(*lanczos_tridiagonal(operator.matmat, start, steps))
            nodes.append(extra.assign(probe=extra.probe + 1))
        nodes = pd.concat(nodes, ignore_index=True)
        nodes["weight"] /= nodes.groupby("probe")["weight"].transform("sum") * nodes.probe.nunique()
        density = broadened_density(nodes)
        rows += [{"quantity": "density", "grid": g, "value": d, "matvecs": steps}
                 for g, d in zip(density.grid, density.density, strict=True)]  # fmt: skip
        triples = zip(nodes.probe, nodes.node, nodes.weight, strict=True)
        rows += [{"quantity": "slq_node", "grid": n, "value": w, "index": int(p)}
                 for p, n, w in triples]  # fmt: skip
    seconds = time.perf_counter() - started
    for row in rows:
        row["seconds"] = seconds
    return rows


def _cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs, targets)


def hessian_spectra(
    model: nn.Module,
    inputs: object,
    targets: object = None,
    loss_fn: LossFunction | None = None,
    k: int = 1,
    blocks: BlockSpec = "all",
    *,
    bn: str = "train",
    quantities: Sequence[str] = QUANTITIES,
    block_quantities: Sequence[str] | None = None,
    tol: float = 1e-3,
    max_matvecs: int = 100,
    block_size: int = 1,
    trace_probes: int = 16,
    density_steps: int = 40,
    density_probes: int = 1,
    model_name: str | None = None,
    seed: int = 0,
    cache: bool | None = None,
) -> pd.DataFrame:
    """Hessian spectra of the mean loss, whole parameter vector (block "all", depth 0) and
    per block (diagonal blocks H_bb), as a tidy frame (``COLUMNS``), one row per value:

    - ``eigenvalue``: the top-k (Lanczos; ``index`` = rank, 0 = largest; ``error`` = the
      certified residual bound, every value within it of a true eigenvalue; ``converged``
      when all k bounds are <= tol * |largest| within ``max_matvecs`` products);
    - ``trace``: Hutchinson with ``trace_probes`` Rademacher probes deflated by the Lanczos
      basis (``error`` = standard error);
    - ``density``: SLQ with ``density_steps`` Lanczos steps and ``density_probes`` probes
      (the eigenvalue run is the first), Gaussian-broadened: ``grid`` = eigenvalue, ``value``
      = density (integrates to 1; times ``params`` for a count); ``slq_node`` rows hold the
      raw quadrature nodes (``grid``) and weights (``value``), ``index`` = probe.

    ``inputs``/``targets``: one batch (a tensor, tuple of positional or dict of keyword
    inputs), or ``inputs`` a list of (inputs, targets) pairs and ``targets=None`` for the
    Hessian of the size-weighted mean loss over several batches. ``loss_fn(outputs, targets)``
    (``loss_fn(outputs)`` without targets) returns the mean loss; default cross-entropy.
    ``blocks``: "all" (zoo models: stem, every block, head), None (whole net only), a list of
    (name, module) pairs or of parameter-name globs, or a dict name -> parameter names.
    ``bn``: "train" (batch statistics, the training objective) or "eval" (running
    statistics). ``block_quantities``: what to measure per block (default: as
    ``quantities``). The model is never changed.
    """
    check_choice("bn", bn, BN_MODES)
    block_quantities = quantities if block_quantities is None else block_quantities
    for quantity in (*quantities, *block_quantities):
        check_choice("quantity", quantity, QUANTITIES)
    batches = _batches(inputs, targets)
    if loss_fn is None:
        if batches[0].targets is None:
            raise UserInputError("without targets, pass loss_fn(outputs) -> scalar loss")
        loss_fn = _cross_entropy
    budget = Budget(k, tol, max_matvecs, block_size, trace_probes, density_steps,
                    density_probes, seed)  # fmt: skip
    if not isinstance(k, int) or k < 1 or trace_probes < 2 or density_steps < 1:
        raise UserInputError("k and density_steps must be positive, trace_probes >= 2")
    with preserved_rng():
        surface = LossSurface(model, batches, loss_fn, bn, seed=seed, cache=cache)
        targets_ = [ParameterBlock(NETWORK, surface.names, 0, NETWORK)] if quantities else []
        parts = [(target, quantities) for target in targets_]
        parts += [(b, block_quantities) for b in resolve_blocks(model, blocks, surface.names)]
        frames = []
        for target, asked in parts:
            if not asked:
                continue
            operator = surface.operator(target.names)
            rows = pd.DataFrame(_measure(operator, asked, budget))
            labels = {"model": model_name or type(model).__name__, "block": target.name,
                      "depth": target.depth, "kind": target.kind, "params": operator.dim,
                      "bn": bn}  # fmt: skip
            frames.append(rows.assign(**labels))
    frame = pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS)
    return frame
