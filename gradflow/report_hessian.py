"""Figures of Hessian spectra frames (``gf.hessian_spectra``); plotting only reads frames.

``hessian_figure``: per block, the top eigenvalue (with its certified bound) and the trace
(with its standard error) vs block depth, one line per model (and line style per step).
``hessian_density_figure``: the SLQ spectral density of the whole parameter vector.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .report import paper_style


def _style(frame: pd.DataFrame) -> str | None:
    return "step" if "step" in frame and frame["step"].nunique() > 1 else None


def hessian_figure(frame: pd.DataFrame) -> plt.Figure:
    """Top eigenvalue and trace of each diagonal Hessian block vs block depth (log scale;
    non-positive values are left out of the log axis), one line per model."""
    paper_style()
    blocks = frame[(frame["block"] != "all") & frame["quantity"].isin(["eigenvalue", "trace"])]
    top = blocks[(blocks["quantity"] == "trace") | (blocks["index"] == 0)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    titles = {"eigenvalue": "top eigenvalue of H_bb", "trace": "trace of H_bb (Hutchinson)"}
    for ax, (quantity, title) in zip(axes, titles.items(), strict=True):
        data = top[(top["quantity"] == quantity) & (top["value"] > 0)]
        if not data.empty:
            sns.lineplot(data=data, x="depth", y="value", hue="model", style=_style(data),
                         marker="o", markersize=3, ax=ax)  # fmt: skip
            ax.set_yscale("log")
        ax.set_xlabel("block (1 = stem, last = head)")
        ax.set_ylabel(title)
        ax.set_title(title)
    fig.suptitle("Curvature per block: diagonal blocks of the Hessian")
    fig.tight_layout()
    return fig


def hessian_density_figure(frame: pd.DataFrame, block: str = "all") -> plt.Figure:
    """SLQ density of the eigenvalues of ``block`` (default the whole parameter vector), on
    a log density axis as in Ghorbani et al. 2019 and PyHessian: one panel per model (each
    with its own eigenvalue range: plain and residual nets differ by orders of magnitude)."""
    paper_style()
    data = frame[(frame["quantity"] == "density") & (frame["block"] == block)].copy()
    models = list(dict.fromkeys(data["model"])) or ["(none)"]
    width = max(3.2 * len(models), 5.5)  # room for the title with one panel
    fig, axes = plt.subplots(1, len(models), figsize=(width, 3.4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        part = data[data["model"] == model]
        if not part.empty:
            floor = 1e-12 * float(part["value"].max())
            part = part.assign(value=np.maximum(part["value"].astype(float), floor))
            sns.lineplot(data=part, x="grid", y="value", style=_style(part), ax=ax)
            ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (SLQ, broadened)")
    fig.suptitle(f"Hessian spectral density ({'whole network' if block == 'all' else block})")
    fig.tight_layout()
    return fig


def hessian_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model and step: the whole net's top eigenvalue (+ bound) and trace (+ s.e.), and
    the block with the largest top eigenvalue of its diagonal Hessian block."""
    steps = "step" in frame
    rows = []
    for key, part in frame.groupby(["model", "step"] if steps else ["model"], sort=False):
        whole = part[part["block"] == "all"]
        top = whole[(whole["quantity"] == "eigenvalue") & (whole["index"] == 0)]
        trace = whole[whole["quantity"] == "trace"]
        blocks = part[(part["block"] != "all") & (part["quantity"] == "eigenvalue")]
        sharpest = blocks.loc[blocks["value"].idxmax()] if len(blocks) else None
        row = dict(zip(["model", "step"] if steps else ["model"], np.atleast_1d(key), strict=True))
        row.update(
            top_eigenvalue=float(top["value"].iloc[0]) if len(top) else np.nan,
            top_bound=float(top["error"].iloc[0]) if len(top) else np.nan,
            trace=float(trace["value"].iloc[0]) if len(trace) else np.nan,
            trace_se=float(trace["error"].iloc[0]) if len(trace) else np.nan,
            sharpest_block=None if sharpest is None else sharpest["block"],
            block_top=np.nan if sharpest is None else float(sharpest["value"]),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def analysis_hessian_section(frame: pd.DataFrame, meta: dict):
    """The "Curvature" section of ``gradflow analyze --hessian``: method (BN mode, sub-batch,
    budget), the per-model table, top eigenvalue per block vs depth, the whole net's density."""
    from .report import Section

    budget, batches = meta.get("budget", {}), meta.get("sub_batch", {})
    sizes = ", ".join(f"{model} {size}" for model, size in batches.items()) or "?"
    method = (
        f"Hessian of the loss on the first samples of each model's measurement batch ({sizes}), "
        f"{meta.get('bn_meaning', 'BN mode ' + str(meta.get('bn')))}, on a private copy. Whole "
        f"net: top eigenvalue by Lanczos ({budget.get('whole_steps')} steps; top_bound = "
        "certified residual bound), trace by Hutchinson with "
        f"{budget.get('whole_probes')} probes deflated by the Lanczos basis (trace_se = "
        "standard error), and the SLQ density of that Lanczos run. Per block (stem, each "
        "block of gf.structure, head): the diagonal Hessian block of its parameters, top "
        f"eigenvalue from at most {budget.get('block_matvecs')} products and trace from "
        f"{budget.get('block_probes')} probes (rough numbers: a fixed budget bounds the time)."
    )
    figures = [
        ("hessian_blocks", hessian_figure(frame),
         "Top eigenvalue and trace of every block's diagonal Hessian block vs depth, one line "
         "per model (plain vs residual)."),
        ("hessian_density", hessian_density_figure(frame),
         "SLQ spectral density of the whole network's Hessian."),
    ]  # fmt: skip
    table = hessian_table(frame)
    return Section("Curvature (loss Hessian)", paragraphs=[method], table=table, figures=figures)
