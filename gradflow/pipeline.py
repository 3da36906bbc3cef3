"""``gradflow analyze`` end to end: analyse at init, train for ``--steps``, analyse again.

Above both ``analyze`` and ``train``: the analysis never imports the trainer, the trainer
never imports the analysis; this module hands the trained models from one to the other.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields

import pandas as pd
from torch import nn

from .analyze import AnalysisResult, analyze, parse_device, torch_threads
from .configs import AnalysisConfig, TrainConfig
from .finite import mark_summary
from .memory import DEFAULT_BATCH
from .state import preserved_rng
from .summaries import spectra_summary_by_step, summary_table


def run_analysis(config: AnalysisConfig) -> AnalysisResult:
    """Analyse ``config.models`` at init (or from the checkpoint), and after ``config.steps``
    iterations of the paper's recipe when that is > 0 (``gradflow.train``, same seed)."""
    config.validate()
    options = {f.name: getattr(config, f.name) for f in fields(config)}
    del options["models"], options["steps"]
    with torch_threads(config.threads), preserved_rng():
        started = time.time()
        initial = analyze(config.models, **options)
        if not config.steps:
            return initial
        trained, train_timings = {}, []
        for name in config.models:
            phase_started = time.perf_counter()
            trained[name] = train_for_analysis(name, config)
            seconds = round(time.perf_counter() - phase_started, 2)
            train_timings.append(
                {"model": name, "step": config.steps, "phase": "train", "seconds": seconds}
            )
        options.update(init=None, checkpoint=None, whatif=False)  # whatif: at init only
        after = analyze(trained, step=config.steps, **options)
    return merge(config, [initial, after], train_timings, time.time() - started)


def train_for_analysis(name: str, config: AnalysisConfig) -> nn.Module:
    """``name`` after ``config.steps`` iterations of the paper's recipe (``gradflow.train``).

    The trainer draws the initial weights with the same seed as ``analyze``'s
    ``build_model``, so the analysis at step 0 and at step N follow one run. The lr
    schedule spans the N steps.
    """
    from .train import train

    result = train(
        TrainConfig(
            model=name,
            init=config.init,
            data=config.data,
            data_dir=config.data_dir,
            iterations=config.steps,
            batch_size=config.batch_size or DEFAULT_BATCH,  # the paper's CIFAR batch
            eval_every=config.steps,
            record_every=0,
            checkpoint_every=0,
            seed=config.seed,
            device=str(parse_device(config.device)),
            progress=False,
        )
    )
    return result.model


def merge(
    config: AnalysisConfig, parts: list[AnalysisResult], train_timings: list[dict], wall: float
) -> AnalysisResult:
    """One result from the analyses at each step: frames model by model, step by step."""
    order = {name: i for i, name in enumerate(config.models)}

    def stacked(name: str) -> pd.DataFrame:
        frame = pd.concat([getattr(part, name) for part in parts], ignore_index=True)
        rank = frame["model"].map(order)
        return frame.iloc[rank.argsort(kind="stable")].reset_index(drop=True)

    records, spectra = stacked("records"), stacked("spectra")
    spectra_summary = spectra_summary_by_step(spectra)
    timings = [*parts[0].meta["phase_seconds"], *train_timings, *parts[1].meta["phase_seconds"]]
    timings.sort(key=lambda t: order[t["model"]])  # stable: record, spectra, train, ...
    meta = {
        **parts[0].meta,
        "config": asdict(config),
        "wall_time_s": round(wall, 2),
        "phase_seconds": timings,
        "record": [*parts[0].meta["record"], *parts[1].meta["record"]],
        "spectra": [*parts[0].meta.get("spectra", []), *parts[1].meta.get("spectra", [])],
        "nonfinite": [*parts[0].meta["nonfinite"], *parts[1].meta["nonfinite"]],
    }
    summary = mark_summary(summary_table(records, spectra_summary), records, meta["nonfinite"])
    hessian = stacked("hessian") if parts[0].hessian is not None else None
    return AnalysisResult(
        records, spectra, spectra_summary, summary, meta, whatif=parts[0].whatif, hessian=hessian
    )
