"""Report pieces shared by the experiments: versions, comparison sentences, tables.

Every sentence of a report's "Compared with the paper" section comes from ``compare``:
two measured numbers, the direction the paper (or a reasoned expectation) predicts, and
the verdict that follows from them.
"""

from __future__ import annotations

import json
import platform
import shlex
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from gradflow import io as gio
from gradflow import provenance
from gradflow.summaries import deepest_prod
from gradflow.train import TrainResult

PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"


def versions() -> dict[str, str]:
    """Versions of what produced a report: the shared ones, matplotlib and the platform."""
    import matplotlib

    return {
        **provenance.versions(),
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(terse=True),
    }


# ----------------------------------------------------------------------------- comparisons
def compare(
    subject: str,
    value: float,
    other: str,
    other_value: float,
    *,
    quantity: str,
    expected: str | None,
    paper: str,
    verb: str = "ends with",
    unit: str = "%",
    budget: str = "at this scale",
    source: str = "paper",
) -> str:
    """One sentence from two measured numbers: is ``subject``'s ``quantity`` ``expected``
    ("higher"/"lower"/None: no claim) than ``other``'s, as the paper (``paper``: where it
    says so) finds? ``source="expectation"`` for a reasoned expectation, not a finding."""
    if value == other_value:
        relation = f"the same {quantity} as"
    else:
        relation = f"a {'higher' if value > other_value else 'lower'} {quantity} than"
    numbers = f"{value:.3g}{unit} vs {other_value:.3g}{unit}"
    if expected is None:  # the literature makes no claim to check: a reference only
        return f"{subject} {verb} {relation} {other} ({numbers}); {paper}."
    holds = (value > other_value) if expected == "higher" else (value < other_value)
    verdict = (
        ("as in the paper" if holds else f"the paper's finding is not reproduced {budget}")
        if source == "paper"
        else (
            "as the literature finds"
            if holds
            else f"the measurement does not support the literature {budget}"
        )
        if source == "literature"
        else ("as expected" if holds else f"the expectation does not hold {budget}")
    )
    return f"{subject} {verb} {relation} {other} ({numbers}): {verdict} ({paper})."


def final_errors(results: dict[str, TrainResult]) -> pd.DataFrame:
    """One row per run: its seed, final training and test error (%), best test error,
    parameters."""
    from gradflow.models import count_parameters

    rows = []
    for label, result in results.items():
        history = result.history[result.history.quantity == "error"]
        test = history[history.split == "test"].value
        rows.append(
            {
                "model": label,
                "seed": result.config.seed,
                "params": count_parameters(result.model),
                "train_error": result.final("train"),
                "test_error": result.final("test"),
                "best_test_error": float(test.min()),
            }
        )
    columns = ["model", "seed", "params", "train_error", "test_error", "best_test_error"]
    return pd.DataFrame(rows, columns=columns)


def histories(results: dict[str, TrainResult]) -> pd.DataFrame:
    """All runs' history frames stacked (the model column holds each run's label, the seed
    column its seed)."""
    frames = [r.history.assign(seed=r.config.seed) for r in results.values()]
    return pd.concat(frames, ignore_index=True)


def deepest_spectra(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model (and step): ``gradflow.summaries.deepest_prod`` (the cumulative spectrum at
    the deepest depth; log10_spread = log10(largest / RMS) needs no smallest value)."""
    return deepest_prod(summary)


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """A copy for a README table: missing numbers as an en dash instead of "nan"."""
    return table.astype(object).where(table.notna(), "\u2013")


def compare_rows(table: pd.DataFrame, subject: str, other: str, column: str, **options) -> str:
    """``compare`` of two rows of ``table`` (index labels) in ``column``."""
    value, other_value = float(table.at[subject, column]), float(table.at[other, column])
    return compare(subject, value, other, other_value, **options)


# ----------------------------------------------------------------------------- the report
def write_report(
    experiment,
    title: str,
    sections: list,
    frames: dict[str, pd.DataFrame],
    comparisons: list[str],
    heading: str = "Compared with the paper",
    reference: str = f"Paper: {PAPER} (numbers as in PAPER_FACTS.md).",
) -> Path:
    """README.md (+ figures/*.png), data/<frame>.csv and meta.json of ``experiment`` (an
    ``Experiment``) into its ``--out``: a header (command, data, scale, wall time,
    versions), the sections, "Compared with the paper" (``heading``, closed by
    ``reference``) and the table of runs."""
    from gradflow.report import Report, Section

    out = Path(experiment.args.out)
    wall = time.perf_counter() - experiment.started
    runs = pd.DataFrame(experiment.runs)
    header = Section("How this report was made", paragraphs=_header(experiment, wall))
    compared = Section(heading, paragraphs=[*comparisons, reference])
    runs_section = Section(
        "Training runs",
        paragraphs=[
            "Trained here or reused from the run cache (--cache; same training settings, "
            "same run). Errors in %, the last logged value; train_wall_s is the time the "
            "run took when it was trained."
        ],
        table=runs,
    )
    Report(title, [header, *sections, compared, runs_section]).write(
        out, html_name=None, markdown_name="README.md"
    )
    for name, frame in {**frames, "runs": runs}.items():
        gio.write_text(out / "data" / f"{name}.csv", frame.to_csv(index=False, float_format="%.6g"))
    meta = provenance.run_meta(
        {key: value for key, value in vars(experiment.args).items() if key != "argv"},
        provenance.data_meta(experiment.dataset("test")),
        wall,
        experiment=experiment.args.experiment,
        scale=asdict(experiment.scale),
        runs=experiment.runs,
    )
    meta["command"] = command(experiment)
    meta["versions"] = versions()
    gio.write_text(out / "meta.json", json.dumps(meta, indent=2, default=str) + "\n")
    experiment.log(f"report in {out} ({wall:.1f} s)")
    return out


def command(experiment) -> str:
    """The exact command line of ``experiment``, from the repository root."""
    script = f"experiments/{experiment.args.experiment}.py"
    return shlex.join(["python", script, *experiment.args.argv])


def _header(experiment, wall: float) -> list[str]:
    """The report's first section: command, data, scale, wall time, versions."""
    scale, data = experiment.scale, experiment.dataset("test")
    lines = [
        f"Command (from the repository root): `{command(experiment)}`",
        f"Data: {data.description} ({data.channels} x {data.image_size} x "
        f"{data.image_size}, {data.num_classes} classes).",
    ]
    if data.is_synthetic:
        lines.append(
            "**These are synthetic images generated in code, not real data**: the numbers "
            "check that the pipeline works and say nothing about real images."
        )
    lines += [
        f"Scale: `{scale.name}`: {scale.iterations} iterations for CIFAR-style nets "
        f"({scale.imagenet_iterations} for ImageNet-style), batch {scale.batch_size}, SGD "
        "lr 0.1 momentum 0.9 weight decay 1e-4, lr divided by 10 at 50% and 75% of the "
        f"budget, {scale.evaluations} test-set evaluations per run"
        + (f", {scale.val_size} training images held out" if scale.val_size else "")
        + ". The paper trains 64k iterations on CIFAR-10 (section 4.2)."
        + "".join(
            f" {model} starts at lr 0.01 until a batch's training error is below 80% (at "
            f"most {scale.warmup_iterations} iterations), as the paper's ResNet-110."
            for model in dict.fromkeys(run["model"] for run in experiment.runs)
            if experiment.config(model).warmup_iterations
        ),
        f"Wall time of this script: {_duration(wall)} on {torch.get_num_threads()} torch "
        f"thread(s) ({sum(r['status'] == 'trained' for r in experiment.runs)} runs trained "
        f"here, {sum(r['status'] == 'reused' for r in experiment.runs)} reused from the cache).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
    ]
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
