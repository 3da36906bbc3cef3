"""One analysis run: models + a probe batch -> records and spectra -> summary and report.

``analyze(["plain56", "resnet56"])`` is what ``gradflow analyze`` runs. For each model it
measures, at initialisation (and after ``steps`` training iterations, or from a checkpoint):

- the Recorder's frame on one batch (response std per 3x3 layer, activation-gradient norm
  at every block boundary, parameter-gradient and weight norms);
- the block and cumulative Jacobian spectra on a few probe samples (eval-mode BN with
  running statistics calibrated on the probe batch in a copy of the model);

and condenses them into one summary row per model and a plain-language verdict.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import io as gio
from .errors import UserInputError

SUMMARY_COLUMNS = [
    "model",
    "step",
    "blocks",
    "grad_log10_ratio",
    "response_std_min",
    "response_std_max",
    "prod_depth",
    "prod_largest",
    "prod_rms",
    "prod_smallest",
    "prod_log10_condition",
    "prod_bottom_converged",
]
# A smallest singular value below this fraction of the largest counts as zero (rank-deficient).
RANK_DEFICIENT = 1e-6


@dataclass
class AnalysisConfig:
    """Everything that determines an analysis run (also written to meta.json)."""

    models: list[str]
    data: str = "synthetic"
    data_dir: str | None = None
    batch_size: int = 128
    samples: int = 2
    k: int = 8
    depths: str = "auto"
    seed: int = 0
    device: str = "cpu"
    init: str | None = None
    steps: int = 0
    checkpoint: str | None = None
    progress: bool = True
    threads: int = 1


@dataclass
class AnalysisResult:
    """The frames of one run (records, spectra, spectra summary, summary) and its metadata."""

    records: pd.DataFrame
    spectra: pd.DataFrame
    spectra_summary: pd.DataFrame
    summary: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def frames(self) -> dict[str, pd.DataFrame]:
        return {
            "records": self.records,
            "spectra": self.spectra,
            "spectra_summary": self.spectra_summary,
            "summary": self.summary,
        }

    def verdicts(self) -> list[str]:
        """One plain-language line per analysed (model, step)."""
        return [verdict(row) for row in self.summary.to_dict("records")]

    def summary_text(self) -> str:
        """The terminal summary: the table, then one line per model."""
        shown = self.summary.drop(columns=["prod_smallest", "prod_bottom_converged"])
        if shown["step"].nunique() == 1:
            shown = shown.drop(columns="step")
        table = shown.to_string(index=False, float_format=lambda v: f"{v:.3g}")
        return table + "\n\n" + "\n".join(self.verdicts())

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write report.html, figures/, data/*.parquet|csv and meta.json into ``out``.

        Everything is written into a temporary sibling folder that is renamed onto ``out``
        at the end, so an interrupted save leaves no half-written report.
        """
        from .report import build_analysis_report

        out = Path(out)
        check_out(out, overwrite=overwrite)
        staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for name, frame in self.frames.items():
                gio.write_frame(frame, staging / "data", name)
            build_analysis_report(self).write(staging)
            gio.write_text(staging / "meta.json", json.dumps(self.meta, indent=2, default=str))
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return out


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse a report folder that is a file, or an existing non-empty one unless overwriting."""
    if out.exists() and out.is_file():
        raise UserInputError(f"--out {out} is a file; give a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserInputError(
            f"output folder {out} exists and is not empty; choose another --out "
            "or pass --force to replace it"
        )


def verdict(row: dict) -> str:
    """A sentence on one summary row: how the gradient scales, how conditioned prod J is."""
    ratio = row["grad_log10_ratio"]
    if not math.isfinite(ratio):
        flow = "gradient norm is not finite somewhere (see the records)"
    elif abs(ratio) < 0.3:
        flow = f"gradient norm is preserved from output to input (10^{ratio:+.2f})"
    elif ratio > 0:
        flow = f"gradient grows 10^{ratio:.1f}x from output to input"
    else:
        flow = f"gradient shrinks 10^{-ratio:.1f}x from output to input"
    spectrum = _spectrum_sentence(row)
    step = f" (step {row['step']})" if row.get("step") else ""
    return f"{row['model']}{step}: {flow}; {spectrum}."


def _spectrum_sentence(row: dict) -> str:
    """Largest and RMS singular values of prod J at the deepest depth, and its conditioning.

    The top values converge fast and the RMS (Hutchinson) is unbiased; the bottom values
    are either converged, or Ritz upper bounds (so the condition number is a lower bound),
    or ~0 because inactive ReLU outputs make the map rank-deficient.
    """
    largest, rms = row["prod_largest"], row["prod_rms"]
    if not math.isfinite(largest):
        return "cumulative Jacobian spectrum not available"
    text = (
        f"prod J to block {row['prod_depth']}: largest singular value {largest:.3g}, RMS {rms:.3g}"
    )
    smallest, cond = row["prod_smallest"], row["prod_log10_condition"]
    if not smallest > RANK_DEFICIENT * largest:
        return text + ", rank-deficient (smallest ~0: inactive ReLU outputs)"
    if row["prod_bottom_converged"]:
        return text + f", condition number 10^{cond:.1f}"
    return text + f", condition number >= 10^{cond:.1f} (bottom values not converged)"


def summarize(records: pd.DataFrame, spectra_summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, step): the numbers that say whether gradient flows and why."""
    rows = []
    for (model, step), part in records.groupby(["model", "step"], sort=False):
        grads = part[part["quantity"] == "activation_grad_norm"].sort_values("depth")
        responses = part[part["quantity"] == "response_std"]["value"]
        ratio = float("nan")
        if len(grads) >= 2:
            first, last = grads["value"].iloc[0], grads["value"].iloc[-1]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = float(np.log10(first / last))
        row = {
            "model": model,
            "step": int(step),
            "blocks": int(grads["depth"].max()) if len(grads) else 0,
            "grad_log10_ratio": ratio,
            "response_std_min": float(responses.min()) if len(responses) else float("nan"),
            "response_std_max": float(responses.max()) if len(responses) else float("nan"),
        }
        row.update(_full_depth_spectrum(spectra_summary, model, step))
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _full_depth_spectrum(spectra_summary: pd.DataFrame, model: str, step: int) -> dict:
    """prod J at the deepest analysed depth, geometric means over the probe samples."""
    empty = dict.fromkeys(SUMMARY_COLUMNS[6:], np.nan)
    if spectra_summary.empty:
        return empty
    part = spectra_summary[
        (spectra_summary["model"] == model)
        & (spectra_summary["operator"] == "prod")
        & (spectra_summary["step"] == step)
    ]
    if part.empty:
        return empty
    depth = int(part["depth"].max())
    last = part[part["depth"] == depth]
    largest = _geomean(last["largest"])
    smallest = _geomean(last["smallest"])
    return {
        "prod_depth": depth,
        "prod_largest": largest,
        "prod_rms": float(np.sqrt(last["mean_sq_estimate"].mean())),
        "prod_smallest": smallest,
        "prod_log10_condition": float(np.log10(largest / smallest)) if smallest > 0 else np.inf,
        "prod_bottom_converged": bool((last["has_bottom"] & last["converged"]).all()),
    }


def _geomean(values: pd.Series) -> float:
    positive = values[values > 0]
    if len(positive) < len(values):
        return 0.0
    return float(np.exp(np.log(positive).mean()))


# ------------------------------------------------------------------------------ running


def build_model(
    name: str, dataset, init: str | None, device: torch.device, seed: int = 0
) -> nn.Module:
    """Create ``name`` for the data set's channels and classes (zoo, torchvision or file).

    The weights are drawn after ``torch.manual_seed(seed)``, as ``gradflow train`` does, so
    the same seed gives the same initial model here and in a training run.
    """
    from .models import create_model

    options = {"num_classes": dataset.num_classes, "in_channels": dataset.channels}
    if init:
        options["init"] = init
    if ":" in name:
        if name.startswith("torchvision:"):
            options.pop("in_channels")
        else:
            from .models.external import accepted_options

            options = accepted_options(name, options)
    torch.manual_seed(seed)
    return create_model(name, **options).to(device)


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> None:
    """Load a state dict (raw, or under "model" as gradflow train writes it) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserInputError(f"checkpoint {path} could not be read ({err})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UserInputError(f"checkpoint {path} holds no state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).split("\n")[1:3]
        raise UserInputError(
            f"checkpoint {path} does not match model {name}: " + " ".join(s.strip() for s in first)
        ) from None


def analyze(
    models: list[str] | str,
    *,
    data: str = "synthetic",
    data_dir: str | None = None,
    batch_size: int = 128,
    samples: int = 2,
    k: int = 8,
    depths: str = "auto",
    seed: int = 0,
    device: str = "cpu",
    init: str | None = None,
    steps: int = 0,
    checkpoint: str | None = None,
    progress: bool = True,
    threads: int = 1,
) -> AnalysisResult:
    """Measure gradient flow through each model at init (and after training) on one batch.

    ``threads``: torch intra-op threads during the run (restored afterwards; 0 keeps the
    current setting). One thread is the default: the spectra are many small batched
    products that gain little from threads and slow down badly when another process holds
    the cores (measured: 23 s for plain56 + resnet56 with 1 thread against 77-240 s with 2
    on a loaded 2-core machine), and the bits written do not depend on the core count.
    """
    config = AnalysisConfig(
        [models] if isinstance(models, str) else list(models),
        data=data,
        data_dir=data_dir,
        batch_size=batch_size,
        samples=samples,
        k=k,
        depths=depths,
        seed=seed,
        device=device,
        init=init,
        steps=steps,
        checkpoint=checkpoint,
        progress=progress,
        threads=threads,
    )
    if threads < 0:
        raise UserInputError(f"threads must be >= 0 (0: keep torch's setting), got {threads}")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(config)
    finally:
        torch.set_num_threads(previous)


def _run(config: AnalysisConfig) -> AnalysisResult:
    from tqdm.auto import tqdm

    from .data import load_dataset
    from .record import record
    from .spectra import block_spectra, summarize_spectra

    if not config.models:
        raise UserInputError("no model given: name at least one, e.g. --model resnet56")
    if config.checkpoint and len(config.models) != 1:
        raise UserInputError("--checkpoint applies to one model: pass exactly one --model")
    if config.samples < 1 or config.k < 1 or config.batch_size < 2:
        raise UserInputError("--samples and --k must be >= 1 and --batch-size >= 2")
    device = _device(config.device)
    started = time.time()
    # the synthetic set is generated in code: 2,000 images are plenty for a probe batch
    sized = {"size": 2000} if config.data == "synthetic" else {}
    dataset = load_dataset(config.data, data_dir=config.data_dir, **sized)
    x, y = dataset.batch(config.batch_size, seed=config.seed)
    x, y = x.to(device), y.to(device)
    rng_state = torch.random.get_rng_state()
    models = {
        name: build_model(name, dataset, config.init, device, config.seed) for name in config.models
    }
    phases = ["record", "spectra"] + (["train", "record", "spectra"] if config.steps else [])
    bar = tqdm(
        total=len(models) * len(phases),
        disable=not (config.progress and sys.stderr.isatty()),
        desc="analyze",
        unit="phase",
        file=sys.stderr,
    )
    records, spectra, timings = [], [], []
    try:
        for name, model in models.items():
            if config.checkpoint:
                load_checkpoint(model, config.checkpoint, name)
            step = 0
            for phase in phases:
                bar.set_postfix_str(f"{name}: {phase}")
                phase_started = time.perf_counter()
                if phase == "record":
                    frame = record(model, x, y, label=name)
                    records.append(frame.assign(step=step))
                elif phase == "spectra":
                    torch.manual_seed(config.seed)
                    frame = block_spectra(
                        model,
                        x,
                        k=config.k,
                        depths=_depths(config.depths),
                        samples=config.samples,
                        model_name=name,
                        seed=config.seed,
                    )
                    spectra.append(frame.assign(step=step))
                else:
                    model = _trained(name, config, device)
                    step = config.steps
                seconds = round(time.perf_counter() - phase_started, 2)
                timings.append({"model": name, "step": step, "phase": phase, "seconds": seconds})
                bar.update()
    finally:
        bar.close()
        torch.random.set_rng_state(rng_state)
    records_frame = pd.concat(records, ignore_index=True)
    spectra_frame = pd.concat(spectra, ignore_index=True)
    spectra_summary = pd.concat(
        [summarize_spectra(part).assign(step=step) for step, part in spectra_frame.groupby("step")],
        ignore_index=True,
    )
    summary = summarize(records_frame, spectra_summary)
    meta = _meta(config, dataset, time.time() - started)
    meta["phase_seconds"] = timings
    return AnalysisResult(records_frame, spectra_frame, spectra_summary, summary, meta)


def _trained(name: str, config: AnalysisConfig, device: torch.device) -> nn.Module:
    """``name`` after ``config.steps`` iterations of the paper's recipe (gradflow.train).

    The trainer draws the initial weights with the same seed as ``build_model``, so the
    analysis at step 0 and at step N follow one run. The lr schedule spans the N steps.
    """
    from .train import TrainConfig, train

    result = train(
        TrainConfig(
            model=name,
            init=config.init,
            data=config.data,
            data_dir=config.data_dir,
            iterations=config.steps,
            batch_size=config.batch_size,
            eval_every=config.steps,
            record_every=0,
            checkpoint_every=0,
            seed=config.seed,
            device=str(device),
            progress=False,
        )
    )
    return result.model


def _depths(depths: str) -> str | list[int]:
    """--depths: "auto", "all" or a comma list of 1-based block numbers."""
    if depths in ("auto", "all"):
        return depths
    try:
        return [int(d) for d in depths.split(",") if d.strip()]
    except ValueError:
        raise UserInputError(
            f"--depths {depths!r}: use auto, all or block numbers like 1,9,18,27"
        ) from None


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda asked for, but no CUDA device is available here")
    return device


def _meta(config: AnalysisConfig, dataset, wall_time: float) -> dict:
    import gradflow

    return {
        "config": asdict(config),
        "command": " ".join(sys.argv),
        "data": {
            "name": dataset.name,
            "description": dataset.description,
            "synthetic": bool(dataset.is_synthetic),
        },
        "wall_time_s": round(wall_time, 2),
        "versions": {
            "gradflow": gradflow.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "python": platform.python_version(),
        },
        "threads": torch.get_num_threads(),
    }
