"""Cumulative Jacobian spectra vs depth, plain vs residual, at initialisation and trained.

Backprop multiplies by the Jacobian of every block: dL/dx = dL/dz_L prod_l J_l, with
J_l = J_H for a plain block and I + J_F for a residual one. This script measures the
singular values of the cumulative product (input -> output of block k) at several depths,
and the activation-gradient norms, for plain and residual nets at initialisation and after
training (trained runs from the cache, shared with fig6).
"""

from __future__ import annotations

import pandas as pd

from gradflow.record_pass import record
from gradflow.report import Section, activation_grad_figure, cumulative_spectra_figure
from gradflow.summaries import spectra_summary_by_step

from .common import Experiment, compare_rows, deepest_spectra, experiment_main, gradient_log10_ratio

EXPECTATION = (
    "the identity term of I + J_F predicts it: the backprop argument of He et al.'s "
    "follow-up, Identity Mappings in Deep Residual Networks (2016); the CVPR paper measures "
    "no spectra"
)
HEALTHY = (
    "a reference, not a claim checked here: He et al. 2016 (section 4.1) verify that with BN "
    "the backward signals of plain nets exhibit healthy norms, i.e. do not vanish; a positive "
    "log10 ratio means the gradient grows from the last block towards the first"
)


def measure(experiment: Experiment, model, label: str, step: int, x, y):
    """(records, spectra) of one model state, both with a ``step`` column."""
    frame = record(model, x, y, probes=["activation_grad_norm"], label=label)
    frame = frame[frame.quantity == "activation_grad_norm"].assign(step=step)
    return frame, experiment.spectra(model, x, label).assign(step=step)


@experiment_main("jacobian")
def main(experiment: Experiment) -> None:
    """Train or load the runs, measure at init and after training, write the report."""
    records, spectra = measure_all(experiment)
    summary = spectra_summary_by_step(spectra)
    table = deepest_spectra(summary)
    ratios = gradient_log10_ratio(records, by=("model", "step"))
    table["grad_log10_ratio"] = [ratios[m, s] for m, s in zip(table.model, table.step, strict=True)]
    steps = sorted(records["step"].unique())
    experiment.write_report(
        "Cumulative Jacobian spectra: plain vs residual",
        sections(table, summary, records, steps),
        {"records": records, "spectra": spectra, "spectra_summary": summary, "summary": table},
        comparisons(table, steps),
    )


def measure_all(experiment: Experiment) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Records and spectra of every model at initialisation and after its training run."""
    x, y = experiment.measurement_batch()
    records, spectra = [], []
    for model, init in experiment.models():
        trained = experiment.run(model, init)
        for step, network in (
            (0, experiment.initial_model(model, init)),
            (trained.config.iterations, trained.model.train()),
        ):
            frame, spectrum = measure(experiment, network, model, step, x, y)
            records.append(frame)
            spectra.append(spectrum)
    return pd.concat(records, ignore_index=True), pd.concat(spectra, ignore_index=True)


def comparisons(table: pd.DataFrame, steps: list[int]) -> list[str]:
    """Each plain net against its residual counterpart, at every step."""
    comparisons = []
    for step in steps:
        when = "at initialisation" if step == 0 else f"after {step} iterations"
        deepest = table[table.step == step].set_index("model")
        for plain in [m for m in deepest.index if m.startswith("plain")]:
            residual = plain.replace("plain", "resnet")
            if residual not in deepest.index:
                continue
            comparisons += [
                compare_rows(deepest, plain, residual, "log10_spread", verb=f"has {when}",
                             unit="", expected="higher", paper=EXPECTATION, source="expectation",
                             quantity="spread log10(largest / RMS singular value) of the "
                             "cumulative Jacobian at the last block"),
                compare_rows(deepest, plain, residual, "grad_log10_ratio", verb=f"has {when}",
                             unit="", expected=None, paper=HEALTHY,
                             quantity="log10 ratio of the gradient norm at the first block to "
                             "the last"),
            ]  # fmt: skip
    return comparisons


def sections(
    table: pd.DataFrame, summary: pd.DataFrame, records: pd.DataFrame, steps: list[int]
) -> list[Section]:
    """The spectra section (table and one figure per step) and the backward-signal one."""
    note = (
        "Per sample, BN in eval mode with its statistics calibrated on the measurement batch in a "
        "copy of each model (at initialisation and after training alike). The band spans the "
        "smallest to the largest computed singular value; the smallest are Krylov estimates "
        "(upper bounds on the true smallest) unless the summary says converged, so "
        "log10_condition is a lower bound; log10_spread = log10(largest / RMS singular "
        "value) needs no smallest value (0 for an isometry) and is what the comparison uses."
    )
    return [
        Section(
            "Cumulative spectra vs depth",
            paragraphs=[note],
            table=table,
            figures=[
                (
                    f"cumulative_spectra_step{step}",
                    cumulative_spectra_figure(summary[summary.step == step]),
                    f"Cumulative Jacobian singular values vs depth, "
                    f"{'initialisation' if step == 0 else f'after {step} iterations'}.",
                )
                for step in steps
            ],
        ),
        Section(
            "Backward signal",
            paragraphs=[
                "||dL/dz_k|| at every block boundary on the measurement batch (train-mode "
                "BN), at initialisation and after training (line style = step)."
            ],
            figures=[
                (
                    "activation_grad_norm",
                    activation_grad_figure(records),
                    "Activation-gradient norm at block boundaries.",
                )
            ],
        ),
    ]
