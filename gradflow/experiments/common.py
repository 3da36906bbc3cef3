"""What every experiment script shares: arguments, runs and reports (presets: ``scales``).

A script builds an ``Experiment`` from its command line (``--scale smoke|small|full``,
``--out``, ``--data``, ``--data-dir``, ``--cache``, ``--seed`` or ``--seeds``, ``--quiet``),
asks it for trained runs (``experiment.run(model, init, seed=...)``: trained once, then
loaded from the run cache by every script that asks for the same training settings, see
``run_cache``; ``seeds``: the comparisons over several seeds) and writes its
report with ``experiment.write_report``: README.md with the figures inline, PNGs, a CSV per
frame and meta.json (command, data, scale, wall time, versions, which runs were reused).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradflow.configs import DATA_DIR_HELP, dataset_names
from gradflow.errors import UserInputError
from gradflow.models.build import build_model
from gradflow.options import add_options, option
from gradflow.provenance import meta_wall_time
from gradflow.summaries import gradient_log10_ratio
from gradflow.train import TrainConfig, TrainResult

from .reporting import (
    compare,
    compare_rows,
    deepest_spectra,
    final_errors,
    histories,
    shown,
    write_report,
)
from .run_cache import DONE, RunFailed, cached_run, run_dir, run_key
from .scales import INITS, SCALES, STEP_SECONDS, WARMUP_MODELS, Scale
from .seeds import compare_seeds, seed_list, seed_table

__all__ = [
    "DONE", "INITS", "SCALES", "STEP_SECONDS", "Experiment", "RunFailed", "Scale",
    "TrainConfig", "TrainResult", "cached_run", "compare", "compare_rows", "compare_seeds",
    "deepest_spectra", "entry", "experiment_main", "final_errors", "gradient_log10_ratio",
    "histories", "parse_args", "run_dir", "run_key", "seed_table", "shown", "start",
]  # fmt: skip


# ----------------------------------------------------------------------------- arguments
@dataclass
class ExperimentOptions:
    """The command line every experiment shares (flags from these fields' options)."""

    scale: str = option(
        "small",
        choices=lambda: list(SCALES),
        help="smoke: synthetic 8x8 images, seconds (tests); small: Fashion-MNIST 32x32 on a "
        "2-core CPU, up to ~45 min; full: the paper's CIFAR-10 settings (GPU)",
    )
    out: str | None = option(
        None,
        help="report folder (default: reports/<experiment> at small scale, "
        "runs/reports/<experiment>-<scale> otherwise)",
    )
    data: str | None = option(None, choices=dataset_names, help="data set (default: the scale's)")
    data_dir: str | None = option(None, help=DATA_DIR_HELP)
    cache: str = option(
        "runs", help="run cache shared by the scripts (default: runs/ in the working directory)"
    )
    seed: int = option(
        0, help="seed of the initial weights, data order and measurement batch (default 0)"
    )
    seeds: tuple[int, ...] | None = option(
        None,
        type=seed_list,
        metavar="A,B,...",
        help="train and report several seeds (e.g. 0,1,2): mean, spread and per-seed values, "
        "and a difference within the seeds' spread called within noise (the rule: "
        "gradflow/experiments/seeds.py); the first seed also seeds the measurement batch. "
        "Only for experiments that compare training runs (fig1, fig6, seed_spread)",
    )
    quiet: bool = option(False, help="no progress on stderr")
    plan: bool = option(False, help="list the runs and the estimated time, then stop")


def parse_args(
    script: str,
    description: str,
    argv: list[str] | None,
    seeds: tuple[int, ...] | None = None,
) -> argparse.Namespace:
    """The shared command line of ``script`` (its file path); ``--out`` defaults to
    reports/<script name> at small scale (the committed reports), else under runs/, both
    relative to the working directory. ``args.seeds`` is always a tuple (``--seeds``, else
    ``--seed``, else ``seeds``) and ``args.seed`` its first seed. ``seeds``: the default
    seeds of an experiment that reports several; None: one seed only (default 0), and
    ``--seeds`` with more than one is a user error."""
    experiment = Path(script).stem
    parser = argparse.ArgumentParser(
        prog=f"gradflow reproduce {experiment}", description=description
    )
    add_options(parser, ExperimentOptions, defaults={"seed": None})
    args = parser.parse_args(argv)
    if args.seeds and args.seed is not None:
        parser.error("give either --seed N (one seed) or --seeds A,B,... (several), not both")
    args.seeds = args.seeds or ((args.seed,) if args.seed is not None else tuple(seeds or (0,)))
    args.seed = args.seeds[0]
    if seeds is None and len(args.seeds) > 1:
        raise UserInputError(
            f"{experiment} reports one seed; --seeds is for the experiments that compare "
            "training runs (fig1_degradation, fig6_cifar_depth, seed_spread): use --seed N"
        )
    args.experiment = experiment
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.out is None:  # relative to the working directory (the repository root)
        small = args.scale == "small"
        args.out = f"reports/{experiment}" if small else f"runs/reports/{experiment}-{args.scale}"
    return args


def start(
    script: str,
    doc: str,
    argv: list[str] | None,
    key: str,
    *,
    seeds: tuple[int, ...] | None = None,
) -> Experiment | None:
    """The experiment of ``script`` (its file; ``doc``: its docstring) from its command line,
    or None when ``--plan`` has printed its runs and nothing should be trained (``seeds``: as
    for ``parse_args``)."""
    experiment = Experiment(parse_args(script, doc.splitlines()[0], argv, seeds), key)
    return None if experiment.plan() else experiment


def experiment_main(
    key: str, *, seeds: tuple[int, ...] | None = None
) -> Callable[[Callable[[Experiment], None]], Callable]:
    """Decorator: ``report(experiment)`` becomes its module's ``main(argv)``, which parses the
    shared command line, prints the plan for ``--plan``, else runs ``report``. ``seeds``: as
    for ``start`` (an experiment that handles several seeds passes its default, e.g. (0,))."""

    def decorate(report: Callable[[Experiment], None]) -> Callable[[list[str] | None], None]:
        module = sys.modules[report.__module__]

        def main(argv: list[str] | None = None) -> None:
            experiment = start(module.__file__, module.__doc__ or "", argv, key, seeds=seeds)
            if experiment is not None:
                report(experiment)

        main.__doc__ = report.__doc__
        return main

    return decorate


def entry(main, argv: list[str] | None = None) -> int:
    """Run a script's ``main``: a UserInputError becomes one line on stderr and exit code 2."""
    try:
        main(argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run_label(model: str, init: str) -> str:
    """A run's label in frames and reports: the model, followed by its init unless he."""
    return model if init == "he" else f"{model} {init}"


# ----------------------------------------------------------------------------- experiment
class Experiment:
    """One script's run: its scale, data, cached training runs and report (see module doc)."""

    def __init__(self, args: argparse.Namespace, key: str) -> None:
        self.args, self.key = args, key
        self.scale = SCALES[args.scale]
        self.data = args.data or self.scale.data
        self.started = time.perf_counter()
        self.runs: list[dict] = []
        if self.scale.threads:
            torch.set_num_threads(self.scale.threads)

    def log(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[{self.args.experiment}] {message}", file=sys.stderr, flush=True)

    def models(self) -> list[tuple[str, str]]:
        """(model, init) pairs of this experiment at this scale ("model:init" or "model")."""
        return [tuple(f"{entry}:he".split(":")[:2]) for entry in self.scale.models[self.key]]

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds this experiment trains every run with (``--seeds``, else ``--seed``)."""
        return tuple(self.args.seeds)

    def config(self, model: str, init: str = "he", seed: int | None = None) -> TrainConfig:
        """The one TrainConfig of (model, init) at this scale and ``seed`` (default: the
        first seed): equal settings share a run."""
        from gradflow.models import get_model_info

        scale, synthetic = self.scale, self.data == "synthetic"
        imagenet = get_model_info(model).family == "imagenet"
        iterations = scale.imagenet_iterations if imagenet else scale.iterations
        eval_every = max(1, iterations // scale.evaluations)
        return TrainConfig(
            model=model,
            init=None if init == "he" else init,
            data=self.data,
            data_dir=self.args.data_dir,
            pad_to=32 if self.data == "fashion-mnist" else None,
            synthetic_size=scale.synthetic_size if synthetic else None,
            synthetic_image_size=scale.image_size if synthetic else 32,
            val_size=scale.val_size,
            iterations=iterations,
            batch_size=scale.batch_size,
            eval_every=eval_every,
            record_every=max(1, iterations // scale.records),
            checkpoint_every=max(1, iterations // scale.checkpoints),
            warmup_iterations=scale.warmup_iterations if model in WARMUP_MODELS else 0,
            seed=self.args.seed if seed is None else seed,
            progress=not self.args.quiet,
        )

    def run(
        self,
        model: str,
        init: str = "he",
        *,
        label: str | None = None,
        may_diverge: bool = False,
        seed: int | None = None,
    ) -> TrainResult | None:
        """The trained run of (model, init) with ``seed`` (default: the first), from the cache
        if there; if it diverged, None when ``may_diverge`` (an ablation reports it), else
        RunFailed (exit code 2)."""
        config = replace(self.config(model, init, seed), label=label)
        name = label or model
        folder = run_dir(config, self.args.cache).name
        self.log(f"{name} seed {config.seed}: {config.iterations} iterations (cache {folder})")
        entry = {"label": name, "model": model, "init": init, "seed": config.seed,
                 "iterations": config.iterations}  # fmt: skip
        try:
            result = cached_run(config, self.args.cache)
        except RunFailed as err:
            if not may_diverge:
                raise
            self.log(f"{name}: {err}")
            self.runs.append({**entry, "status": "diverged"})
            return None
        result.model.cpu()  # analysis runs on the CPU, as for runs loaded from the cache
        finals = result.meta.get("final_error_percent", {})
        self.runs.append(
            {
                **entry,
                "status": "reused" if result.meta["cache"]["reused"] else "trained",
                "final_train_error": finals.get("train"),
                "final_test_error": finals.get("test"),
                "train_wall_s": meta_wall_time(result.meta),
                "cache_dir": Path(result.meta["cache"]["dir"]).name,
            }
        )
        return result

    def train_all(self) -> tuple[dict[str, TrainResult], pd.DataFrame, pd.DataFrame]:
        """Every model of this experiment trained (or loaded) with every seed: the first
        seed's runs, and every seed's stacked histories and final errors (long frames with a
        ``seed`` column, one row per model and seed)."""
        runs = {seed: {run_label(model, init): self.run(model, init, label=run_label(model, init),
                                                        seed=seed)
                       for model, init in self.models()}
                for seed in self.seeds}  # fmt: skip
        history = pd.concat([histories(r) for r in runs.values()], ignore_index=True)
        table = pd.concat([final_errors(r) for r in runs.values()], ignore_index=True)
        return runs[self.seeds[0]], history, table

    def estimate_seconds(self) -> pd.DataFrame:
        """Per run: cached or not, and the estimated training + evaluation seconds on the
        machine of STEP_SECONDS (scaled by batch size and image area; NaN if unmeasured)."""
        rows = []
        test_images = {"synthetic": 2000}.get(self.data, 10_000)
        area = (self.scale.image_size if self.data == "synthetic" else 32) ** 2 / 1024
        for (model, init), seed in product(self.models(), self.seeds):
            config = self.config(model, init, seed)
            step, per_500 = STEP_SECONDS.get(model, (np.nan, np.nan))
            passes = config.iterations // config.eval_every + (
                config.iterations % config.eval_every > 0
            )
            seconds = area * (
                config.iterations * step * config.batch_size / 128
                + passes * per_500 * test_images / 500
            )
            cached = (run_dir(config, self.args.cache) / DONE).exists()
            rows.append({"model": model, "init": init, "seed": seed,
                         "iterations": config.iterations,
                         "cached": cached, "seconds": 0.0 if cached else seconds,
                         "standalone_seconds": seconds})  # fmt: skip
        return pd.DataFrame(rows)

    def plan(self) -> bool:
        """With --plan: print the runs and the estimate, and return True (the script stops)."""
        if not self.args.plan:
            return False
        runs = self.estimate_seconds()
        print(runs.to_string(index=False))
        print(
            f"estimated training + evaluation: {runs.seconds.sum() / 60:.0f} min with this "
            f"cache, {runs.standalone_seconds.sum() / 60:.0f} min from scratch "
            "(step times of a shared 2-core CPU, one thread; see gradflow/experiments/scales.py)"
        )
        return True

    def dataset(self, split: str = "test"):
        """A split of this experiment's data, loaded exactly as the trainer loads it."""
        from gradflow.history import dataset_split

        return dataset_split(self.config("resnet20"), split)

    def measurement_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The measurement batch: ``measurement_batch`` class-balanced test images (seeded)."""
        return self.dataset("test").batch(self.scale.measurement_batch, seed=self.args.seed)

    def initial_model(self, model: str, init: str = "he") -> nn.Module:
        """The weights the trainer starts (model, init) from: the one ``build_model``."""
        config, data = self.config(model, init), self.dataset("test")
        options = {"in_channels": data.channels, "num_classes": data.num_classes}
        return build_model(
            model, options={**options, "init": config.init}, seed=config.seed
        ).train()

    def spectra(self, model: nn.Module, x: torch.Tensor, label: str) -> pd.DataFrame:
        """Cumulative Jacobian spectra (input -> output of block k) at evenly spaced depths."""
        from gradflow.spectra import block_spectra

        blocks = len(model.blocks())
        depths = np.unique(np.linspace(1, blocks, min(blocks, self.scale.spectra_depths)).round())
        return block_spectra(
            model,
            x,
            k=self.scale.spectra_k,
            depths=[int(d) for d in depths],
            samples=self.scale.spectra_samples,
            operators=("prod",),
            max_matvecs=self.scale.spectra_matvecs,
            model_name=label,
            seed=self.args.seed,
        )

    def write_report(
        self,
        title: str,
        sections: list,
        frames: dict[str, pd.DataFrame],
        comparisons: list[str],
        **options: str,
    ) -> Path:
        """README.md (+ figures/*.png), data/<frame>.csv and meta.json into ``--out``
        (``options``: ``heading``, ``reference`` of the comparison section)."""
        return write_report(self, title, sections, frames, comparisons, **options)
