"""The plan for one model: its record micro-batches (``model_plan``) and its spectra phase's
samples and ends of each spectrum (``spectra_plan``).

``gradflow analyze``'s default spectra (two probe samples; the k largest and the k smallest
singular values of every block and cumulative operator, a Krylov budget of 128 products each)
cost about ``samples x products x F x N`` GFLOP, with F the forward GFLOP of one sample
(``gradflow.memory.forward_gflop``, counted, not timed: the same plan on any machine) and N the
whole-net maps the operators amount to (a block counts 1/L of the net, the product to depth d
counts d/L, for the depths that will be measured). The zoo's CIFAR nets stay well inside
``SPECTRA_BUDGET_GFLOP`` (resnet56: 150); when a model's estimate exceeds it and the user left
the choice to gradflow (``samples=None``, ``which="auto"``), the plan

1. measures one probe sample instead of two (every value keeps its own error bound), then
2. measures only the largest values (``which="largest"``: a Golub-Kahan solve stops when the k
   values are certified to ``tol``; a chain of blocks gets every depth's product from one walk).
   The smallest values would spend the whole Krylov budget on each operator and, at these
   sizes, end as unconverged Ritz upper bounds; they are *not measured* then: the frame has no
   bottom rows and the summary's prod_smallest and condition number are NaN, not a bound;
3. (all three of ``--samples``, ``--which``, ``--depths`` left to gradflow) measures the first
   and the last block only (the walk and the block operators of the depths between go), then
4. cuts the Krylov budget of each block operator (``max_matvecs``, at least
   ``MIN_KRYLOV_PRODUCTS``) to fit: values it cannot certify to the tolerance are reported as
   unconverged with their bounds (e.g. 200k-800k-dim blocks of resnet50 at 3x224x224).

What was used and why is in ``meta["spectra"]`` and in the report; a value the user gives
(``--samples``, ``--which``, ``--depths``) is always used as given.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import ParameterError
from .inputs import Inputs, batch_size

SPECTRA_BUDGET_GFLOP = 200.0  # resnet56 at 3x32x32 by default: 150; resnet50 at 224: 6200
DEFAULT_SAMPLES = 2
KRYLOV_PRODUCTS = {"both": 128, "largest": 96}  # per operator: the budget; a top-8 solve: 62-108
# The smallest Krylov budget the plan cuts to: a top-8 Golub-Kahan solve spends >= 2 k + 2
# products before its first certificate (an unconverged value keeps its honest bound).
MIN_KRYLOV_PRODUCTS = 32
PRECHECK_SAMPLES = 16  # the non-finite check before the long phases: one small forward+backward
PRECHECK_GFLOP = 8.0  # ... of at most this forward work (resnet56: 16 x 0.25; resnet50@224: 2)


def parse_depths(depths: str) -> str | list[int]:
    """--depths: "auto", "all" or a comma list of 1-based block numbers."""
    if depths in ("auto", "all"):
        return depths
    try:
        return [int(d) for d in depths.split(",") if d.strip()]
    except ValueError:
        raise ParameterError(
            "depths", f"depths {depths!r}: use auto, all or block numbers like 1,9,18,27"
        ) from None


def operator_maps(model: nn.Module, inputs: Inputs, depths: Any) -> tuple[float, list[int], int]:
    """(N, depths, L): the whole-net maps of the block and product operators at ``depths``
    (``gradflow.spectra.blocks``' rule on ``gradflow.structure`` of two samples)."""
    per_block, chosen = _blocks(model, inputs, depths)
    return _maps(per_block, chosen), chosen, len(per_block)


def _blocks(model: nn.Module, inputs: Inputs, depths: Any) -> tuple[list[int], list[int]]:
    """(operators per block: 2 residual, 1 plain; the depths ``depths`` resolves to)."""
    from .spectra.blocks import _resolve_depths
    from .structure import layout_inputs, structure

    found = structure(model, layout_inputs(inputs))
    blocks = found.blocks
    chosen = _resolve_depths(depths, [(b.path, b) for b in blocks])
    return [2 if b.kind == "residual" else 1 for b in blocks], chosen


def _maps(per_block: list[int], chosen: list[int]) -> float:
    """A block operator counts 1/L of the net, the product to depth d counts d/L."""
    count = len(per_block)
    return sum(per_block[d - 1] / count + d / count for d in chosen)


def spectra_plan(label: str, model: nn.Module, inputs: Inputs, config, gflop: float) -> dict:
    """Samples, ``which``, depths and Krylov budget of one model's spectra within
    ``SPECTRA_BUDGET_GFLOP`` (module doc)."""
    from .spectra.blocks import DEFAULT_MATVECS  # block_spectra's cap, unless the plan cuts it

    per_block, chosen = _blocks(model, inputs, parse_depths(config.depths))
    count = len(per_block)
    samples = config.samples or DEFAULT_SAMPLES
    samples = min(samples, batch_size(inputs))
    which = "both" if config.which == "auto" else config.which
    products, cap = KRYLOV_PRODUCTS[which], DEFAULT_MATVECS

    def estimate() -> float:
        return samples * products * gflop * _maps(per_block, chosen)

    default = round(estimate(), 1)
    reduced = []
    if config.samples is None and estimate() > SPECTRA_BUDGET_GFLOP and samples > 1:
        samples, reduced = 1, [*reduced, f"samples {DEFAULT_SAMPLES} -> 1"]
    if config.which == "auto" and estimate() > SPECTRA_BUDGET_GFLOP:
        which, reduced = "largest", [*reduced, "which both -> largest (smallest not measured)"]
        products = KRYLOV_PRODUCTS[which]
    automatic = config.samples is None and config.which == "auto" and config.depths == "auto"
    if automatic and estimate() > SPECTRA_BUDGET_GFLOP and len(chosen) > 2:
        before, chosen = chosen, [chosen[0], chosen[-1]]
        reduced = [*reduced, f"depths {_listed(before)} -> {_listed(chosen)}"]
    if automatic and estimate() > SPECTRA_BUDGET_GFLOP:
        fitted = products * SPECTRA_BUDGET_GFLOP / estimate()
        products = cap = max(MIN_KRYLOV_PRODUCTS, 2 * int(fitted // 2))
        reduced = [
            *reduced,
            f"Krylov budget {DEFAULT_MATVECS} -> {cap} products per operator (a value it "
            "cannot certify to the tolerance is marked unconverged, with its bound)",
        ]
    return {
        "model": label,
        "samples": samples,
        "which": which,
        "k": config.k,
        "depths": chosen,
        "blocks": count,
        "max_matvecs": cap,
        "forward_gflop_per_sample": round(gflop, 3),
        "whole_net_maps": round(_maps(per_block, chosen), 3),
        "default_estimate_gflop": default,
        "estimate_gflop": round(estimate(), 1),
        "budget_gflop": SPECTRA_BUDGET_GFLOP,
        "reduced": reduced,
    }


def _listed(depths: list[int]) -> str:
    return ",".join(str(d) for d in depths)


def spectra_lines(meta: dict) -> list[str]:
    """One sentence per model whose spectra plan was reduced (meta.json's ``spectra``)."""
    lines = []
    for plan in meta.get("spectra") or []:
        if not plan["reduced"]:
            continue
        lines.append(
            f"Spectra of {plan['model']}: the default plan would cost ~"
            f"{plan['default_estimate_gflop']:.0f} GFLOP ({plan['forward_gflop_per_sample']:.3g} "
            f"GFLOP per forward, {plan['whole_net_maps']:.3g} whole-net maps), over the budget "
            f"of {plan['budget_gflop']:.0f}: measured with {'; '.join(plan['reduced'])} "
            f"(~{plan['estimate_gflop']:.0f} GFLOP); pass --samples and --which both to "
            "measure the default."
        )
    return lines


def spectra_sentence(meta: dict) -> str:
    """What the spectra measured, for the report's summary (the same words as before when
    every model got the default plan)."""
    config = meta.get("config", {})
    plans = meta.get("spectra") or []
    samples = sorted({p["samples"] for p in plans}) or [config.get("samples")]
    which = sorted({p["which"] for p in plans}) or ["both"]
    k = config.get("k")
    ends = {
        "both": f"the {k} largest and {k} smallest singular values per operator",
        "largest": f"the {k} largest singular values per operator",
        "smallest": f"the {k} smallest singular values per operator",
    }
    if len(samples) == 1 and len(which) == 1:
        return f"spectra on the first {samples[0]} of them, {ends[which[0]]}"
    return "spectra as planned per model (below)"


def model_plan(probe, config) -> dict:
    """One model's plan for ``gradflow analyze`` (``probe``: ``model_inputs.Probe``): the batch and
    micro-batch of its record phase from its saved bytes per sample, the samples of its
    non-finite precheck, and its spectra plan (key "spectra": ``spectra_plan``; analyze writes
    the record part to meta["record"], the rest to meta["spectra"])."""
    from .memory import (
        MAX_VECTORS_PER_CHUNK,
        choose_micro_batch,
        forward_gflop,
        product_budget_mib,
        record_fixed_bytes,
        saved_bytes_per_sample,
        vectors_per_chunk,
    )

    total = batch_size(probe.inputs)
    per_sample = saved_bytes_per_sample(probe.model, probe.inputs, probe.targets, probe.loss_fn)
    fixed = record_fixed_bytes(probe.model)
    micro = choose_micro_batch(per_sample, total, config.record_memory, fixed)
    gflop = forward_gflop(probe.model, probe.inputs)
    precheck = min(PRECHECK_SAMPLES, max(2, int(PRECHECK_GFLOP / max(gflop, 1e-9))), total)
    return {
        "model": probe.label,
        "batch_size": total,
        "micro_batch": micro,
        "micro_batches": -(-total // micro),
        "saved_mib_per_sample": round(per_sample / 2**20, 3),
        "fixed_mib": round(fixed / 2**20, 1),
        "record_memory_mib": config.record_memory,
        # vectors per batched spectra product on the whole net (a block or a shallower map:
        # as many or more, up to MAX_VECTORS_PER_CHUNK), within the products' share
        "product_vectors": vectors_per_chunk(
            per_sample, MAX_VECTORS_PER_CHUNK, product_budget_mib(config.record_memory)
        ),
        "precheck_samples": precheck,
        "spectra": spectra_plan(probe.label, probe.model, probe.inputs, config, gflop),
    }
