"""A verdict per model: one or two sentences drawn from the measured numbers.

The first sentence says how the gradient scales from the output to the input (the
activation-gradient norms at the block boundaries), where the growth concentrates and how
large each block's Jacobian is there; the second one describes the cumulative Jacobian at the
deepest depth measured. For example (``gradflow analyze --model plain56 --model resnet56``)::

    plain56: exploding gradient: it grows 10^4.1x from output to input at init, spread over
    all 27 blocks (~10^0.15 each); each block's J_H has largest singular value ~4.7. prod
    J_H to block 27: largest singular value 1.54e+05, ...
    resnet56: growing gradient: it grows 10^1.5x from output to input at init; 69% of it in
    blocks 1-9 (stage1.block1 to stage1.block9), where each block's I+J_F has largest
    singular value ~3.9 (2.2 to 5.7). ...

Block names are the ``layer`` column of the records (``gradflow.structure``'s block paths), so
user models are described in the same words. A non-finite number is said to be non-finite,
with the block boundary where it first appears going from the output back to the input, and
is never turned into a diagnosis.

The thresholds, and why:
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .summaries import geomean, summary_table

# |log10 ||dL/dz_0|| / ||dL/dz_L||| below this: "preserved" (within a factor 4). A zero-gamma
# ResNet, whose blocks are all the identity at init, measures -0.47 (resnet56) and -0.48
# (resnet20) on the seeded batch (going backward, the last block's ReLU drops the gradient
# once, where the activations are 0): the band must hold a net that is the identity by
# construction, with margin.
PRESERVED_LOG10 = 0.6
# At or above this (a factor 100): "exploding" / "vanishing"; in between "growing" /
# "shrinking". It separates the seeded pair of He et al.'s Figure 1: plain56 (10^4.1, higher
# training error than plain20 there) from resnet56 (10^1.6); plain20 (10^1.4) and resnet110
# (10^1.9), which both train well in the paper, stay below it.
EXPLODING_LOG10 = 2.0
# "Most of it": the share of the log-growth the named run of blocks carries.
MOST_SHARE = 2 / 3
# The growth is "concentrated" when the shortest run of consecutive blocks carrying
# MOST_SHARE of it spans at most this fraction of the blocks: those blocks then grow the
# gradient at least twice as fast as the average block. Otherwise it is "spread" over all.
CONCENTRATED_SPAN = 1 / 3
# A smallest singular value below this fraction of the largest counts as zero
# (rank-deficient: inactive ReLU outputs), so no condition number is given.
RANK_DEFICIENT = 1e-6

__doc__ += f"""
- preserved: |log-ratio| < {PRESERVED_LOG10}; growing / shrinking below {EXPLODING_LOG10};
  exploding / vanishing from {EXPLODING_LOG10} on (``diagnosis``);
- "most of it": {MOST_SHARE:.0%} of the log-growth; concentrated when that takes at most
  {CONCENTRATED_SPAN:.0%} of the blocks (``growth_run``);
- rank-deficient: smallest singular value < {RANK_DEFICIENT:g} x the largest.

(The reasons are written beside each constant in the source.)
"""

VERDICT_COLUMNS = [
    "model",
    "step",
    "diagnosis",
    "grad_log10_ratio",
    "growth_blocks",
    "growth_share",
    "block_operator",
    "block_largest",
    "verdict",
]
BLOCK_OPERATORS = ("J_H", "I+J_F")  # the Jacobian of a whole plain / residual block


def diagnosis(log10_ratio: float) -> str:
    """preserved / growing / exploding / shrinking / vanishing (thresholds above), or
    non-finite: a number that is not finite gets no diagnosis."""
    if not math.isfinite(log10_ratio):
        return "non-finite"
    size = abs(log10_ratio)
    if size < PRESERVED_LOG10:
        return "preserved"
    if log10_ratio > 0:
        return "exploding" if size >= EXPLODING_LOG10 else "growing"
    return "vanishing" if size >= EXPLODING_LOG10 else "shrinking"


def boundary_norms(records: pd.DataFrame) -> pd.DataFrame:
    """The activation-gradient norms of one (model, step), ordered by depth (0: block 1's
    input, k: block k's output)."""
    grads = records[records["quantity"] == "activation_grad_norm"]
    return grads.sort_values("depth")[["depth", "layer", "value"]].reset_index(drop=True)


def growth_run(growth: np.ndarray, share: float = MOST_SHARE) -> tuple[int, int]:
    """(first, last) 0-based positions of the shortest run of consecutive blocks whose
    log-growth sums to at least ``share`` of the total (the total's sign counts as growth)."""
    signed = np.asarray(growth, dtype=float) * np.sign(growth.sum())
    target = share * signed.sum()
    sums = np.concatenate([[0.0], np.cumsum(signed)])
    best = (0, len(signed) - 1)
    for first in range(len(signed)):
        reached = np.nonzero(sums[first + 1 :] - sums[first] >= target - 1e-12)[0]
        if len(reached) and reached[0] < best[1] - best[0]:
            best = (first, first + int(reached[0]))
    return best


def _blocks_text(norms: pd.DataFrame, first: int, last: int) -> str:
    """'blocks 1-8 (stage1.block1 to stage1.block8)' for positions first..last of the blocks."""
    a, b = int(norms["depth"].iloc[first + 1]), int(norms["depth"].iloc[last + 1])
    la, lb = norms["layer"].iloc[first + 1], norms["layer"].iloc[last + 1]
    return f"block {a} ({la})" if a == b else f"blocks {a}-{b} ({la} to {lb})"


def _nonfinite_gradient(norms: pd.DataFrame) -> str | None:
    """The sentence on non-finite (or zero, which leaves the log-ratio undefined) norms."""
    values = norms["value"].astype(float)
    bad = ~np.isfinite(values)
    what = "not finite"
    if not bad.any():
        bad, what = values <= 0, "zero"
        if not bad.any():
            return None
    first = norms[bad].iloc[-1]  # the backward pass runs from the deepest boundary
    return (
        f"non-finite gradient: the activation-gradient norm is {what} at {int(bad.sum())} of "
        f"{len(norms)} block boundaries, first (going from the output to the input) at "
        f"{first['layer']} (depth {int(first['depth'])}), so the log-ratio is not finite"
    )


def _sigma_text(blocks: pd.DataFrame, depths: set[int], lead: str) -> tuple[str, str, float]:
    """(words, operator, typical value): ', where each block's J_H has largest singular value
    ~5.2' over the block spectra at ``depths`` (else at every measured depth), the median
    over depths of the geometric mean over samples; or the words saying it is not finite."""
    if blocks.empty:
        return "", "", float("nan")
    per_depth = blocks.groupby("depth")["largest"].agg(geomean)
    operators = sorted(blocks["operator"].unique())
    words = operators[0] if len(operators) == 1 else "Jacobian (J_H or I+J_F)"
    if not np.isfinite(per_depth).all():
        first = int(per_depth[~np.isfinite(per_depth)].index.max())
        return f"{lead}the block spectrum is not finite at block {first}", words, float("nan")
    inside = per_depth[per_depth.index.isin(depths)]
    chosen, scope = (inside, "") if len(inside) else (per_depth, " measured")
    typical, low, high = chosen.median(), chosen.min(), chosen.max()
    spread = f" ({low:.2g} to {high:.2g})" if high > 1.5 * low else ""
    text = f"{lead}each{scope} block's {words} has largest singular value ~{typical:.2g}{spread}"
    return text, words, float(typical)


def _prod_text(row: dict, prod: pd.DataFrame, operator: str | None) -> str:
    """The cumulative Jacobian at the deepest depth: largest, RMS, conditioning (moved here from
    analyze). The top values converge fast and the RMS (Hutchinson) is unbiased; the bottom
    values are converged, or Ritz upper bounds (the condition number is then a lower bound),
    or ~0 because inactive ReLU outputs make the map rank-deficient."""
    if prod.empty:
        return "cumulative Jacobian spectrum not measured"
    largest, rms = row["prod_largest"], row["prod_rms"]
    name = {"J_H": "prod J_H", "I+J_F": "prod (I+J_F)"}.get(operator or "", "prod J")
    if not (math.isfinite(largest) and math.isfinite(rms)):
        bad = prod[~np.isfinite(prod["largest"].astype(float))]
        where = f"block {int(bad['depth'].min())}" if len(bad) else f"block {row['prod_depth']}"
        return f"{name}'s singular values are not finite, first at {where}"
    text = (
        f"{name} to block {row['prod_depth']}: largest singular value {largest:.3g}, RMS {rms:.3g}"
    )
    smallest, cond = row["prod_smallest"], row["prod_log10_condition"]
    if math.isnan(smallest):  # which="largest" (gradflow.budget): no bottom values
        return text + " (smallest singular values not measured)"
    if not smallest > RANK_DEFICIENT * largest:
        return text + ", rank-deficient (smallest ~0: inactive ReLU outputs)"
    if row["prod_bottom_converged"]:
        return text + f", condition number 10^{cond:.1f}"
    return text + f", condition number >= 10^{cond:.1f} (bottom values not converged)"


def _flow_text(ratio: float, label: str, when: str) -> str:
    """'exploding gradient: it grows 10^4.1x from output to input at init'."""
    if label == "preserved":
        return f"gradient preserved: 10^{ratio:+.2f} from output to input{when}"
    verb = "grows" if ratio > 0 else "shrinks"
    return f"{label} gradient: it {verb} 10^{abs(ratio):.1f}x from output to input{when}"


def _gradient_text(norms: pd.DataFrame, ratio: float, blocks: pd.DataFrame, when: str) -> dict:
    """The first sentence (``text``) and its numbers: diagnosis, where the log-growth
    concentrates, the typical largest singular value of the block Jacobians there."""
    problem = _nonfinite_gradient(norms) if len(norms) >= 2 else None
    if len(norms) < 2:
        return {"diagnosis": "non-finite", "text": "no gradient log-ratio: fewer than two "
                "block boundaries were recorded"}  # fmt: skip
    if problem or not math.isfinite(ratio):
        return {"diagnosis": "non-finite", "text": problem or "non-finite gradient log-ratio"}
    out = {"diagnosis": diagnosis(ratio)}
    text = _flow_text(ratio, out["diagnosis"], when)
    values = norms["value"].to_numpy(dtype=float)
    growth = np.log10(values[:-1] / values[1:])  # block k: log10 ||dL/dz_k-1|| / ||dL/dz_k||
    depths, lead = set(norms["depth"].iloc[1:].astype(int)), "; "
    if out["diagnosis"] != "preserved":
        a, b = growth_run(growth)
        if b - a + 1 <= CONCENTRATED_SPAN * len(growth):
            out["growth_blocks"] = _blocks_text(norms, a, b).split(" (")[0]
            out["growth_share"] = float(growth[a : b + 1].sum() / growth.sum())
            text += f"; {out['growth_share']:.0%} of it in {_blocks_text(norms, a, b)}"
            depths, lead = set(norms["depth"].iloc[a + 1 : b + 2].astype(int)), ", where "
        else:
            each = ratio / len(growth)
            text += f", spread over all {len(growth)} blocks (~10^{each:.2f} each)"
    sigma, words, typical = _sigma_text(blocks, depths, lead)
    out.update(text=text + sigma, block_operator=words or None, block_largest=typical)
    return out


def model_verdict(
    row: dict, records: pd.DataFrame, spectra_summary: pd.DataFrame, *, initial: bool = True
) -> dict:
    """The verdict of one summary row (one model at one step) from its own frames' rows."""
    step = int(row.get("step") or 0)
    head = f"{row['model']}" + (f" (step {step})" if step else "")
    when = " at init" if initial and not step else ""
    ratio = float(row["grad_log10_ratio"])
    blocks = spectra_summary[spectra_summary["operator"].isin(BLOCK_OPERATORS)]
    prod = spectra_summary[spectra_summary["operator"] == "prod"]
    out = dict.fromkeys(VERDICT_COLUMNS)
    out.update(model=row["model"], step=step, grad_log10_ratio=ratio)
    if row.get("nonfinite"):  # located by gradflow.finite before the long phases
        out.update(diagnosis="non-finite", verdict=nonfinite_verdict(head, row["nonfinite"]))
        return out
    out.update(_gradient_text(boundary_norms(records), ratio, blocks, when))
    operators = blocks["operator"].unique()
    operator = operators[0] if len(operators) == 1 else None
    second = _capital(_prod_text(row, prod, operator))
    out["verdict"] = f"{head}: {out.pop('text')}. {second}."
    return out


def nonfinite_verdict(head: str, site: str) -> str:
    """The verdict of a model with NaN/Inf: where it first appeared (``gradflow.finite``)."""
    return (
        f"{head}: NOT FINITE: {site}; the numbers that depend on it are NaN in the summary "
        "and the spectra were not computed."
    )


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:] if not text.startswith("prod") else text


def verdict_frame(
    records: pd.DataFrame,
    spectra_summary: pd.DataFrame,
    summary: pd.DataFrame | None = None,
    *,
    initial: bool = True,
) -> pd.DataFrame:
    """One verdict per (model, step): ``VERDICT_COLUMNS``, the sentence in ``verdict``.

    ``initial``: step 0 is the initialisation (False when the weights came from a checkpoint).
    """
    if summary is None:
        summary = summary_table(records, spectra_summary)
    rows = []
    for row in summary.to_dict("records"):
        own = (records["model"] == row["model"]) & (records["step"] == row["step"])
        spectra = spectra_summary
        if not spectra.empty:
            spectra = spectra[(spectra["model"] == row["model"]) & (spectra["step"] == row["step"])]
        else:
            spectra = pd.DataFrame(columns=["operator", "depth", "largest"])
        rows.append(model_verdict(row, records[own], spectra, initial=initial))
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def summary_display(summary: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """The summary as shown (terminal and report): fewer, merged columns so that it fits the
    page; the full table stays in data/summary. Adds the diagnosis; the response std becomes
    one min-max range; the condition number is marked '>=' where it is a lower bound."""
    shown = summary.copy()
    shown.insert(4, "diagnosis", verdicts["diagnosis"].to_numpy())
    low, high = shown.pop("response_std_min"), shown.pop("response_std_max")
    shown.insert(5, "response_std", [_range(a, b) for a, b in zip(low, high, strict=True)])
    shown["prod_log10_condition"] = [
        _condition(c, ok)
        for c, ok in zip(
            shown["prod_log10_condition"], shown.pop("prod_bottom_converged"), strict=True
        )
    ]
    shown = shown.drop(columns=["prod_smallest", "nonfinite"], errors="ignore")
    if shown["step"].nunique() == 1:
        shown = shown.drop(columns="step")
    return shown


def _range(low: float, high: float) -> str:
    a, b = f"{low:.3g}", f"{high:.3g}"
    return a if a == b else f"{a}-{b}"


def _condition(value: float, converged: object) -> str:
    if not isinstance(value, float) or math.isnan(value):
        return "nan"
    return f"{value:.3g}" if converged is True or converged == 1.0 else f">={value:.3g}"
