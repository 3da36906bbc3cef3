"""Hessian spectra of the loss, plain vs residual, 20 and 56 layers, at init and trained.

Top eigenvalues (Lanczos, certified bounds), trace (Hutchinson, deflated) and the SLQ
spectral density of the training loss on one probe batch, for the whole parameter vector
and for the diagonal Hessian block of every block's parameters (stem, blocks, head), with BN
in train mode (the training objective). Trained models are the small-scale runs of the run
cache that fig6_cifar_depth / jacobian_spectra train (the same settings, the same runs); a
run not in the cache is reported as missing, not trained here (except at smoke scale).
Literature: Li et al. 2018 (skip connections keep the landscape smooth), Ghorbani et al.
2019 (outliers of the spectrum, BN), Yao et al. 2020 (PyHessian).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from gradflow.report import Section
from gradflow.report_hessian import hessian_density_figure, hessian_figure
from gradflow.spectra import hessian_spectra

from .common import DONE, compare_rows, run_dir, shown, start

LITERATURE = (
    "Li et al. 2018 find the loss surface of deep nets without skip connections chaotic and "
    "with them smooth; Yao et al. 2020 (PyHessian) measure larger top eigenvalues and traces "
    "without residual connections"
)
OUTLIERS = (
    "Ghorbani et al. 2019 find a few large outlier eigenvalues separated from the bulk and tie "
    "them to BN; fewer outliers in residual nets is the usual reading of Li et al. 2018's "
    "smoother surfaces, not a count those papers report"
)
REFERENCES = (
    "Literature: Li et al., Visualizing the Loss Landscape of Neural Nets, NeurIPS 2018; "
    "Ghorbani, Krishnan and Xiao, An Investigation into Neural Net Optimization via Hessian "
    "Eigenvalue Density, ICML 2019; Yao et al., PyHessian, IEEE BigData 2020. Networks as in "
    "He et al., Deep Residual Learning for Image Recognition, CVPR 2016."
)
QUANTITIES = {  # summary column -> (its error column or None, words, literature)
    "top_eigenvalue": ("top_bound", "top Hessian eigenvalue", LITERATURE),
    "trace": ("trace_se", "Hessian trace", LITERATURE),
    "outliers_slq": (None, "SLQ estimate of the number of eigenvalues above a tenth of the "
                     "top one", OUTLIERS),
}  # fmt: skip


@dataclass(frozen=True)
class HessianBudget:
    """Probe images and Hessian-vector-product budgets of one scale."""

    images: int
    k: int
    max_matvecs: int
    density_steps: int
    trace_probes: int
    block_matvecs: int
    block_probes: int


BUDGETS = {
    "smoke": HessianBudget(8, 2, 6, 6, 2, 3, 2),
    "small": HessianBudget(16, 2, 20, 16, 4, 3, 2),  # fits a shared 2-core CPU
    "full": HessianBudget(128, 8, 100, 80, 16, 20, 8),
}


def measure(network, x, y, label: str, step: int, budget: HessianBudget, seed: int):
    """The whole-net and per-block Hessian frame of one model state (``step`` column)."""
    whole = hessian_spectra(
        network, x, y, k=budget.k, blocks=None, tol=1e-2, max_matvecs=budget.max_matvecs,
        density_steps=budget.density_steps, trace_probes=budget.trace_probes,
        model_name=label, seed=seed,
    )  # fmt: skip
    blocks = hessian_spectra(
        network, x, y, k=1, blocks="all", quantities=(), block_quantities=("eigenvalue", "trace"),
        tol=1e-2, max_matvecs=budget.block_matvecs, trace_probes=budget.block_probes,
        model_name=label, seed=seed,
    )  # fmt: skip
    return pd.concat([whole, blocks], ignore_index=True).assign(step=step)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model and step: top eigenvalue (+ bound), k-th, trace (+ s.e.), SLQ outlier
    count (params x SLQ weight above a tenth of the top eigenvalue), the sharpest block."""
    rows = []
    for (model, step), part in frame.groupby(["model", "step"], sort=False):
        whole = part[part.block == "all"]
        eig = whole[whole.quantity == "eigenvalue"].sort_values("index")
        top = float(eig.value.iloc[0])
        tr = whole[whole.quantity == "trace"].iloc[0]
        nodes = whole[whole.quantity == "slq_node"]
        outliers = float(nodes.value[nodes.grid > 0.1 * top].sum()) * int(whole.params.iloc[0])
        blocks = part[(part.block != "all") & (part.quantity == "eigenvalue")]
        sharpest = blocks.loc[blocks.value.idxmax()]
        rows.append({"model": model, "step": step, "params": int(whole.params.iloc[0]),
                     "top_eigenvalue": top, "top_bound": float(eig.error.iloc[0]),
                     "kth_eigenvalue": float(eig.value.iloc[-1]), "k": len(eig),
                     "converged": bool(eig.converged.all()), "trace": float(tr.value),
                     "trace_se": float(tr.error), "outliers_slq": outliers,
                     "sharpest_block": sharpest.block, "block_top": float(sharpest.value),
                     "seconds": float(part.groupby("block").seconds.first().sum())})  # fmt: skip
    return pd.DataFrame(rows)


def _verdict(table: pd.DataFrame, residual: str, plain: str, column: str) -> tuple[str, str]:
    """(sentence, status) of the literature's "residual lower" for one summary column:
    status "supported", "contradicted" or "unresolved" (the gap within twice the combined
    error; a column without an error is taken at face value)."""
    error, words, paper = QUANTITIES[column]
    step = int(table.at[residual, "step"])
    when = "at initialisation" if step == 0 else f"after {step} iterations"
    sentence = compare_rows(table, residual, plain, column, verb=f"has {when}", unit="",
                            expected="lower", paper=paper, source="literature",
                            quantity=words)  # fmt: skip
    lower = table.at[residual, column] < table.at[plain, column]
    status = "supported" if lower else "contradicted"
    if error is not None:
        gap = abs(table.at[residual, column] - table.at[plain, column])
        spread = (table.at[residual, error] ** 2 + table.at[plain, error] ** 2) ** 0.5
        if gap < 2 * spread:
            status = "unresolved"
            sentence += (f" The difference ({gap:.3g}) is within twice the combined error "
                         f"({spread:.3g}): this measurement does not resolve it.")  # fmt: skip
    return sentence, status


def comparisons(summary: pd.DataFrame) -> list[str]:
    """Residual vs plain at the same depth and step, from the measured numbers, closed by a
    tally of where the measurement supports, contradicts or cannot resolve the literature."""
    out, tally = [], {"supported": [], "contradicted": [], "unresolved": []}
    for step, part in summary.groupby("step", sort=True):
        table = part.set_index("model")
        for plain in [m for m in table.index if m.startswith("plain")]:
            residual = plain.replace("plain", "resnet")
            if residual not in table.index:
                continue
            for column, (_, words, _) in QUANTITIES.items():
                sentence, status = _verdict(table, residual, plain, column)
                out.append(sentence)
                name = words.split(" of ")[0].replace("SLQ estimate", "outlier count")
                tally[status].append(f"{name} of {residual} vs {plain} at step {step}")
    words = {"supported": "supports the literature in", "contradicted": "goes against it in",
             "unresolved": "cannot resolve"}  # fmt: skip
    parts = [f"{words[status]} {len(items)} ({'; '.join(items)})"
             for status, items in tally.items() if items]  # fmt: skip
    out.append(
        f"In sum, of {sum(map(len, tally.values()))} comparisons of residual against plain (the "
        "literature: residual nets have a smaller top eigenvalue, a smaller trace and fewer "
        "outliers), the measurement " + "; ".join(parts) + "."
    )
    negative = summary[summary.trace < 0]
    if len(negative):
        out.append(
            "Negative traces (" + ", ".join(f"{m} at step {t}" for m, t in
            zip(negative.model, negative.step, strict=True)) + ") mean negative curvature "
            "outweighs positive there (train-mode BN makes the loss invariant to the scale of "
            "each conv's weights, which allows it); the comparisons above use the signed "
            "values, while the literature's traces are positive."
        )  # fmt: skip
    return out


def _trained(experiment, model: str):
    """The cached trained run of ``model`` (trained here only at smoke scale), or None."""
    config = experiment.config(model)
    if (
        experiment.scale.name != "smoke"
        and not (run_dir(config, experiment.args.cache) / DONE).exists()
    ):
        experiment.log(f"{model}: no finished run in the cache; trained state left out")
        return None
    return experiment.run(model)


def main(argv: list[str] | None = None) -> None:
    experiment = start(__file__, __doc__, argv, "hessian")
    if experiment is None:  # --plan printed the runs
        return
    budget = BUDGETS[experiment.scale.name]
    x, y = experiment.measurement_batch()
    x, y = x[: budget.images], y[: budget.images]
    frames, missing = [], []
    for model, init in experiment.models():
        experiment.log(f"{model}: Hessian at initialisation")
        states = [(0, experiment.initial_model(model, init))]
        trained = _trained(experiment, model)
        if trained is None:
            missing.append(model)
        else:
            states.append((trained.config.iterations, trained.model.train()))
        for step, network in states:
            frames.append(measure(network, x, y, model, step, budget, experiment.args.seed))
    frame = pd.concat(frames, ignore_index=True)
    summary = summarize(frame)
    notes = comparisons(summary)
    if missing:
        notes.append(
            f"Trained states of {', '.join(missing)} are missing: their small-scale runs were "
            "not in the run cache when this report was made (run `gradflow reproduce "
            "fig6_cifar_depth --scale small` first, then this script again)."
        )
    sections = _sections(frame, summary, budget, len(x))
    experiment.write_report(
        "Hessian spectra: plain vs residual", sections,
        {"hessian": frame, "summary": summary}, notes,
        heading="Compared with the literature", reference=REFERENCES,
    )  # fmt: skip


def _sections(frame, summary, budget: HessianBudget, images: int) -> list[Section]:
    method = (
        f"Loss: cross-entropy on {images} class-balanced test images, BN in train mode (batch "
        "statistics: the training objective), computed on a private copy of each model. Whole "
        f"parameter vector: top-{budget.k} eigenvalues by Lanczos on Hessian-vector products "
        f"({budget.density_steps} steps; top_bound = certified residual bound: an eigenvalue "
        "lies within it), whose run is also the SLQ density probe, and the trace by "
        f"Hutchinson with {budget.trace_probes} Rademacher probes deflated by the Lanczos basis "
        f"(trace_se = standard error). Per block: the diagonal Hessian block of its parameters "
        f"(the rest fixed), top eigenvalue from at most {budget.block_matvecs} products and "
        f"its trace. outliers_slq = params x SLQ weight above a tenth of the top eigenvalue "
        "(one probe: a rough count)."
    )
    steps = sorted(summary.step.unique())
    figures = [("hessian_blocks", hessian_figure(frame), "Top eigenvalue and trace of every "
                "diagonal Hessian block (line style: step).")]  # fmt: skip
    for step in steps:
        when = "initialisation" if step == 0 else f"after {step} iterations"
        density = hessian_density_figure(frame[frame.step == step])
        caption = f"SLQ spectral density of the whole Hessian, {when}."
        figures.append((f"hessian_density_step{step}", density, caption))
    table = summary.assign(**{c: summary[c].map(lambda v: float(f"{v:.4g}")) for c in
                              ("top_eigenvalue", "top_bound", "kth_eigenvalue", "trace",
                               "trace_se", "outliers_slq", "block_top", "seconds")})  # fmt: skip
    return [Section("Curvature", paragraphs=[method], table=shown(table), figures=figures)]


__all__ = ["BUDGETS", "comparisons", "main", "measure", "summarize"]
