"""The ``--hessian`` phase of ``gradflow analyze``: loss curvature per block and whole net.

``hessian_frame(probe, config)`` measures, on the first ``config.hessian_batch`` samples of a
model's measurement batch and with its loss, ``gf.hessian_spectra``'s frame (same columns,
same quantities, plus ``stage``; the caller adds ``step``):

- the whole parameter vector (block ``all``): top eigenvalue (Lanczos, certified bound),
  trace (Hutchinson, deflated) and the SLQ spectral density;
- every block of ``gf.structure`` (any model), with a ``stem`` block (the parameters of
  the structure's stem modules) and a ``head`` block (all parameters left): the top
  eigenvalue and trace of its diagonal Hessian block, kind/stage/index from the structure.

The product budget (``BUDGET``) is fixed, so the phase costs about
(whole + blocks x per-block products) Hessian-vector products on ``hessian_batch`` samples:
bounded, and the same numbers on every run (no timing decides anything).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
from torch import Tensor, nn

from .inputs import batch_size, select_samples
from .losses import resolve_loss
from .structure import layout_inputs, structure

STEM, HEAD = "stem", "head"


@dataclass(frozen=True)
class HessianBudget:
    """Hessian-vector products per measured operator (``gf.hessian_spectra`` arguments)."""

    whole_steps: int = 20  # Lanczos steps of the whole net: top eigenvalue and SLQ density
    whole_probes: int = 4  # Hutchinson probes of the whole net's trace
    block_matvecs: int = 4  # Lanczos products per block (top eigenvalue)
    block_probes: int = 2  # Hutchinson probes per block
    tol: float = 1e-2

    def products(self, blocks: int) -> int:
        """The most Hessian-vector products the phase makes for ``blocks`` blocks."""
        return (
            self.whole_steps + self.whole_probes + blocks * (self.block_matvecs + self.block_probes)
        )


BUDGET = HessianBudget()


def parameter_blocks(model: nn.Module, inputs) -> tuple[dict[str, list[str]], dict]:
    """Block name -> trainable parameter names (stem, the structure's blocks, head), and
    block name -> (stage, index, kind) from ``gf.structure``."""
    found = structure(model, layout_inputs(inputs))
    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def under(paths: list[str]) -> list[str]:
        return [n for n in names if any(n.startswith(f"{path}.") for path in paths)]

    blocks = {b.path: under([b.path]) for b in found.blocks}
    used = {n for group in blocks.values() for n in group}
    stem = [n for n in under(found.stem) if n not in used]
    used |= set(stem)
    groups = {STEM: stem, **blocks, HEAD: [n for n in names if n not in used]}
    positions = {STEM: (None, None, "other"), HEAD: (None, None, "other")}
    positions.update(found.positions())
    return {name: group for name, group in groups.items() if group}, positions


def sub_batch(inputs, targets, size: int):
    """The first ``size`` samples of the inputs and (batched tensor) targets."""
    count = min(size, batch_size(inputs))
    picked = select_samples(inputs, slice(0, count))
    if (
        isinstance(targets, Tensor)
        and targets.dim() >= 1
        and targets.shape[0] == batch_size(inputs)
    ):
        targets = targets[:count]
    return picked, targets, count


def hessian_frame(probe, config, budget: HessianBudget = BUDGET) -> pd.DataFrame:
    """``gf.hessian_spectra`` of ``probe.model`` on its sub-batch: whole net and per block
    (module docstring); the model is never changed."""
    from .spectra import hessian_spectra

    inputs, targets, _ = sub_batch(probe.inputs, probe.targets, config.hessian_batch)
    loss = resolve_loss(probe.loss_fn)
    loss_fn = loss if targets is not None else (lambda output: loss(output, None))
    groups, positions = parameter_blocks(probe.model, inputs)
    common = dict(loss_fn=loss_fn, k=1, bn=config.hessian_bn, tol=budget.tol,
                  model_name=probe.label, seed=config.seed)  # fmt: skip
    whole = hessian_spectra(
        probe.model, inputs, targets, blocks=None, max_matvecs=budget.whole_steps,
        density_steps=budget.whole_steps, trace_probes=budget.whole_probes, **common,
    )  # fmt: skip
    blocks = hessian_spectra(
        probe.model, inputs, targets, blocks=groups, quantities=(),
        block_quantities=("eigenvalue", "trace"), max_matvecs=budget.block_matvecs,
        trace_probes=budget.block_probes, **common,
    )  # fmt: skip
    stage = blocks["block"].map(lambda b: positions[b][0]).astype("Int64")
    blocks = blocks.assign(kind=blocks["block"].map(lambda b: positions[b][2]), stage=stage)
    return pd.concat([whole, blocks], ignore_index=True)


def hessian_meta(config, probes: dict, budget: HessianBudget = BUDGET) -> dict:
    """What meta.json says about the Hessian phase: BN mode, sub-batch, product budget."""
    return {
        "bn": config.hessian_bn,
        "bn_meaning": (
            "train-mode BN: each batch normalised with its own statistics (the training objective)"
            if config.hessian_bn == "train"
            else "eval-mode BN: running statistics (the function used at test time)"
        ),
        "sub_batch": {
            label: min(config.hessian_batch, batch_size(p.inputs)) for label, p in probes.items()
        },
        "budget": asdict(budget),
        "quantities": "whole net (block 'all'): eigenvalue (top), trace, density, slq_node; "
        "per block: eigenvalue (top), trace",
    }
