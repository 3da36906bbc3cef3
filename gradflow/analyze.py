"""One analysis run: models + a measurement batch -> records and spectra -> summary and report.

``analyze(["plain56", "resnet56"])`` is what ``gradflow analyze`` runs (``gradflow.pipeline``
adds the training for ``--steps``; this module does not import the trainer). For each model,
as it is given (or built from its name, or loaded from a checkpoint), it measures:

- the Recorder's frame on one batch (response std per 3x3 layer, activation-gradient norm
  at every block boundary, parameter-gradient and weight norms);
- the block and cumulative Jacobian spectra on a few samples of the batch (eval-mode BN with
  running statistics calibrated on the measurement batch in a copy of the model);

and condenses them into one summary row per model and a plain-language verdict
(``gradflow.verdict``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from . import io as gio
from . import outdir
from .budget import model_plan
from .configs import AnalysisConfig
from .data import ImageDataset
from .errors import ParameterError, UserInputError
from .model_inputs import OnDemand, probe_for
from .provenance import data_meta, run_meta
from .summaries import SUMMARY_COLUMNS, spectra_summary_by_step, summary_table
from .verdict import summary_display, verdict_frame

__all__ = ["SUMMARY_COLUMNS", "AnalysisConfig", "AnalysisResult", "analyze", "check_out"]

REPORT_KIND = "analysis-report"


@dataclass
class AnalysisResult:
    """The frames of one run (records, spectra, spectra summary, summary) and its metadata."""

    records: pd.DataFrame
    spectra: pd.DataFrame
    spectra_summary: pd.DataFrame
    summary: pd.DataFrame
    meta: dict = field(default_factory=dict)
    whatif: pd.DataFrame | None = None  # --whatif: gradflow.whatif.WHATIF_COLUMNS
    hessian: pd.DataFrame | None = None  # with hessian=True: gradflow.analyze_hessian's frame

    @property
    def frames(self) -> dict[str, pd.DataFrame]:
        frames = {
            "records": self.records,
            "spectra": self.spectra,
            "spectra_summary": self.spectra_summary,
            "summary": self.summary,
        }
        if self.whatif is not None:
            frames["whatif"] = self.whatif
        if self.hessian is not None:
            frames["hessian"] = self.hessian
        return frames

    def verdict_frame(self) -> pd.DataFrame:
        """One verdict per analysed (model, step) (``gradflow.verdict.verdict_frame``)."""
        initial = not self.meta.get("config", {}).get("checkpoint")
        return verdict_frame(self.records, self.spectra_summary, self.summary, initial=initial)

    def verdicts(self) -> list[str]:
        """One or two plain-language sentences per analysed (model, step)."""
        return self.verdict_frame()["verdict"].tolist()

    def summary_display(self) -> pd.DataFrame:
        """The summary table as shown in the terminal and the report (fewer, merged columns)."""
        return summary_display(self.summary, self.verdict_frame())

    def summary_text(self) -> str:
        """The terminal summary: the table, then the verdict of each model."""
        table = self.summary_display().to_string(index=False, float_format=lambda v: f"{v:.3g}")
        text = table + "\n\n" + "\n".join(self.verdicts())
        if "whatif" in self.meta:
            from .whatif import whatif_text

            text += "\n\n" + whatif_text(self.whatif, self.meta["whatif"]["notes"])
        return text

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write report.html, figures/, data/*.parquet|csv and meta.json into ``out``.

        Everything is written into a marked staging sibling that is renamed onto ``out`` at
        the end, under the folder's lock (``gradflow.outdir``): an interrupted save leaves no
        half-written report, two saves to one folder cannot both win, and ``overwrite``
        replaces only a report folder that gradflow wrote.
        """
        from .report import build_analysis_report

        out = Path(out)
        check_out(out, overwrite=overwrite)
        with outdir.output_lock(out):
            staging = outdir.staging_dir(out, REPORT_KIND)
            try:
                for name, frame in self.frames.items():
                    gio.write_frame(frame, staging / "data", name)
                build_analysis_report(self).write(staging)
                gio.write_text(staging / "meta.json", json.dumps(self.meta, indent=2, default=str))
                outdir.publish(staging, out, REPORT_KIND, force=overwrite)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return out


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, a report folder gradflow may not write (``outdir.check_target``):
    a file, a folder of someone else's files (even when overwriting), or an earlier report
    unless ``overwrite``."""
    outdir.check_target(Path(out), REPORT_KIND, force=overwrite)


def summarize(records: pd.DataFrame, spectra_summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, step): ``gradflow.summaries.summary_table`` (kept under this name)."""
    return summary_table(records, spectra_summary)


# ------------------------------------------------------------------------------ running

ModelsArg = str | nn.Module | Mapping[str, nn.Module] | Sequence[str | nn.Module | tuple]


def labelled_models(models: ModelsArg) -> list[tuple[str, str | nn.Module]]:
    """(label, registry name or module) pairs from what ``analyze`` accepts.

    A name is its own label; a module without one is labelled by its class name (with
    ``-2``, ``-3``... when the same class comes twice); a dict maps labels to modules.
    """
    if isinstance(models, (str, nn.Module)):
        models = [models]
    items = list(models.items()) if isinstance(models, Mapping) else list(models)
    pairs, seen = [], set()
    for item in items:
        if isinstance(item, tuple):
            label, model = item
        elif isinstance(item, str):
            label, model = item, item
        elif isinstance(item, nn.Module):
            label, model = type(item).__name__, item
        else:
            raise UserInputError(
                f"models: expected registry names, nn.Module objects or (label, module) "
                f"pairs, got {type(item).__name__}"
            )
        base, n = label, 1
        while label in seen:
            n += 1
            label = f"{base}-{n}"
        seen.add(label)
        pairs.append((label, model))
    return pairs


def analyze(
    models: ModelsArg,
    *,
    data: str = "synthetic",
    data_dir: str | None = None,
    batch_size: int | None = None,
    record_memory: int = 1024,
    samples: int | None = None,
    which: str = "auto",
    k: int = 8,
    depths: str = "auto",
    seed: int = 0,
    device: str = "cpu",
    init: str | None = None,
    checkpoint: str | None = None,
    step: int = 0,
    progress: bool = True,
    threads: int = 1,
    input_shape: str | None = None,
    vocab_size: int | None = None,
    seq_len: int | None = None,
    loss: str = "auto",
    model_options: str | None = None,
    whatif: bool = False,
    hessian: bool = False,
    hessian_batch: int = 16,
    hessian_bn: str = "train",
) -> AnalysisResult:
    """Measure gradient flow through each model as it is now, on one measurement batch.

    ``models``: registry names (built for the data set's channels and classes with
    ``build_model``, seeded with ``seed``), ``nn.Module`` objects (analysed as given, never
    changed; labelled by class name), (label, module) pairs or a dict label -> module.
    ``checkpoint`` loads weights into the one named model; ``step`` is the training step
    written into the frames (``gradflow.pipeline`` analyses at init and after training).

    ``threads``: torch intra-op threads during the run (restored afterwards; 0 keeps the
    current setting). One thread is the default: the spectra are many small batched
    products that gain little from threads and slow down badly when another process holds
    the cores (measured: 23 s for plain56 + resnet56 with 1 thread against 77-240 s with 2
    on a loaded 2-core machine), and the bits written do not depend on the core count.

    ``input_shape``, ``vocab_size``/``seq_len``, ``loss`` and ``model_options`` say what
    models outside the zoo are fed and built with (``gradflow.model_inputs``); each model's
    batch is built and checked (one forward, the loss) before any measurement starts.

    ``whatif``: also measure the counterfactual nets of ``gradflow.whatif`` on the same
    batches (``result.whatif``, "What would fix it" in the report).
    ``hessian``: also the loss Hessian's top eigenvalue and trace per block and the whole
    net's spectral density, on the first ``hessian_batch`` samples with BN in ``hessian_bn``
    mode (``gradflow.analyze_hessian``; ``AnalysisResult.hessian``).
    Memory: ``batch_size=None`` takes ``gradflow.memory.default_batch_size`` of each model's
    input size (128 up to 3x32x32, 8 at 3x224x224); the record phase feeds the batch in
    micro-batches whose saved activations fit ``record_memory`` MiB (``meta["record"]``).
    Work: ``samples=None`` and ``which="auto"`` let ``gradflow.budget`` plan each model's
    spectra (2 samples, the k largest and smallest values; 1 sample, then the largest only,
    for a model whose spectra would exceed its work budget; ``meta["spectra"]``).
    Non-finite values: before the long phases, one forward and backward on the first
    micro-batch finds where NaN/Inf first appears (``gradflow.finite.locate_nonfinite``);
    such a model is recorded, its spectra are skipped, its summary cells are NaN and its
    verdict names the module (``meta["nonfinite"]``).
    """
    pairs = labelled_models(models)
    config = AnalysisConfig(
        [label for label, _ in pairs],
        data=data,
        data_dir=data_dir,
        batch_size=batch_size,
        record_memory=record_memory,
        samples=samples,
        which=which,
        k=k,
        depths=depths,
        seed=seed,
        device=device,
        init=init,
        checkpoint=checkpoint,
        progress=progress,
        threads=threads,
        input_shape=input_shape,
        vocab_size=vocab_size,
        seq_len=seq_len,
        loss=loss,
        model_options=model_options,
        whatif=whatif,
        hessian=hessian,
        hessian_batch=hessian_batch,
        hessian_bn=hessian_bn,
    )
    config.validate()
    if checkpoint and not isinstance(pairs[0][1], str):
        raise UserInputError("checkpoint applies to a registry name, not to an nn.Module")
    with torch_threads(threads):
        return _run(config, pairs, step)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside (0: unchanged), then restored."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measurement_dataset(config: AnalysisConfig) -> ImageDataset:
    """The data set the image batches come from (2,000 synthetic images are plenty)."""
    from .data import load_dataset

    sized = {"size": 2000} if config.data == "synthetic" else {}
    return load_dataset(config.data, data_dir=config.data_dir, **sized)


def _progress_bar(config: AnalysisConfig, total: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        disable=not (config.progress and sys.stderr.isatty()),
        desc="analyze",
        unit="phase",
        file=sys.stderr,
    )


def _first_nonfinite(probe, plan: dict, everything: bool = False):
    """Where NaN/Inf first appears on the first ``plan["precheck_samples"]`` (at most
    ``budget.PRECHECK_SAMPLES``, fewer for a model whose forward exceeds ``PRECHECK_GFLOP`` /
    16; or on every micro-batch: after a record phase whose numbers are non-finite although the
    first samples were not)."""
    from .finite import locate_nonfinite
    from .inputs import select_samples
    from .record_pass import micro_batches, slice_targets

    total = plan["batch_size"]
    slices = micro_batches(total, plan["micro_batch"])
    batches = (
        (select_samples(probe.inputs, part), slice_targets(probe.targets, part, total))
        for part in (slices if everything else [slice(0, plan["precheck_samples"])])
    )
    return locate_nonfinite(probe.model, batches, probe.loss_fn)


def _measure(phase: str, probe, config: AnalysisConfig, plan: dict, site) -> pd.DataFrame:
    """One phase on one model: the Recorder's frame ("record") or the spectra ("spectra")."""
    model, label, x = probe.model, probe.label, probe.inputs
    if phase == "hessian":
        from .analyze_hessian import hessian_frame

        return hessian_frame(probe, config)
    if phase == "record":
        from .record_pass import record

        return record(
            model, x, probe.targets, loss_fn=probe.loss_fn, label=label,
            micro_batch=plan["micro_batch"], on_nonfinite="ignore" if site else "warn",
        )  # fmt: skip
    from .spectra import block_spectra
    from .spectra.blocks import COLUMNS

    if site is not None:  # Jacobians at a non-finite point mean nothing: NaN in the summary
        return pd.DataFrame(columns=COLUMNS)
    torch.manual_seed(config.seed)
    spectra = plan["spectra"]
    return block_spectra(
        model,
        x,
        k=config.k,
        depths=spectra["depths"],
        samples=spectra["samples"],
        which=spectra["which"],
        max_matvecs=spectra["max_matvecs"],
        model_name=label,
        seed=config.seed,
    )


def _model_config(config: AnalysisConfig, spec) -> AnalysisConfig:
    """``config`` with this model's batch size (``default_batch_size`` of its input size)."""
    from dataclasses import replace

    from .memory import default_batch_size
    from .model_inputs import parse_shape, zoo_input_size

    if config.batch_size is not None:
        return config
    shape = parse_shape(config.input_shape) or zoo_input_size(spec)
    return replace(config, batch_size=default_batch_size(shape))


def _check_spectra_cost(config: AnalysisConfig, probes: dict, plans: dict) -> None:
    """A --k that sends a map to a too costly dense route is refused before any phase runs
    (with the depths and the ``which`` each model's spectra plan will use)."""
    from .spectra import check_spectra_cost

    for label, probe in probes.items():
        spectra = plans[label]["spectra"]
        check_spectra_cost(
            probe.model, probe.inputs, k=config.k, depths=spectra["depths"], which=spectra["which"]
        )


def _run(config: AnalysisConfig, pairs: list[tuple[str, str | nn.Module]], step: int):
    """Build the models, measure each (record, spectra), summarise; global RNG restored."""
    from .finite import mark_summary
    from .memory import process_peak_rss_mib

    device = parse_device(config.device)
    started = time.time()
    data = OnDemand(lambda: measurement_dataset(config))
    rng_state = torch.random.get_rng_state()
    frames: dict[str, list[pd.DataFrame]] = {"record": [], "spectra": []}
    if config.hessian:
        frames["hessian"] = []
    timings, plans, sites, spectra_plans = [], [], [], []
    try:
        probes = {
            label: probe_for(label, model, _model_config(config, model), data, device)
            for label, model in pairs
        }
        planned = {label: model_plan(probe, config) for label, probe in probes.items()}
        _check_spectra_cost(config, probes, planned)
        bar = _progress_bar(config, len(probes) * len(frames))
        with bar:
            for label, probe in probes.items():
                plans.append(plan := {**planned[label], "step": step})
                spectra_plans.append({**plan["spectra"], "step": step})
                site = _first_nonfinite(probe, plan)
                for phase, collected in frames.items():
                    bar.set_postfix_str(f"{label}: {phase}")
                    frame, timing = _timed(phase, probe, config, plan, site)
                    if phase == "record" and site is None and not _all_finite(frame):
                        site = _first_nonfinite(probe, plan, everything=True)
                    collected.append(frame.assign(step=step))
                    timings.append({"model": label, "step": step, "phase": phase, **timing})
                    bar.update()
                if site is not None:
                    sites.append({"model": label, "step": step, **site.as_dict()})
    finally:
        torch.random.set_rng_state(rng_state)
    records = pd.concat(frames["record"], ignore_index=True)
    spectra = pd.concat(frames["spectra"], ignore_index=True)
    spectra_summary = spectra_summary_by_step(spectra)
    summary = mark_summary(summary_table(records, spectra_summary), records, sites)
    meta = analysis_meta(config, data.value, time.time() - started)
    meta["phase_seconds"] = timings
    # the phases restart the kernel's peak (which getrusage then under-reports): the whole one
    meta["process_peak_rss_mib"] = round(process_peak_rss_mib())
    meta["record"] = [{k: v for k, v in plan.items() if k != "spectra"} for plan in plans]
    meta["spectra"] = spectra_plans
    meta["nonfinite"] = sites
    meta["inputs"] = {label: probe.meta() for label, probe in probes.items()}
    hessian = None
    if config.hessian:
        from .analyze_hessian import hessian_meta

        hessian = pd.concat(frames["hessian"], ignore_index=True)
        meta["hessian"] = hessian_meta(config, probes)
    result = AnalysisResult(records, spectra, spectra_summary, summary, meta, hessian=hessian)
    if config.whatif:
        add_whatif(result, config, dict(pairs), probes, data, device, step)
    return result


def add_whatif(result: AnalysisResult, config, specs: dict, probes: dict, data, device, step):
    """``result.whatif`` and ``meta["whatif"]`` (notes, phase seconds): ``gradflow.whatif``."""
    from . import whatif

    found = whatif.plan(config, specs, probes, data, device)
    records, spectra, timings = whatif.measure(config, found, step)
    result.whatif = whatif.whatif_table(result, found, records, spectra)
    result.meta["whatif"] = {"notes": found.notes, "phase_seconds": timings}


def _timed(phase: str, probe, config: AnalysisConfig, plan: dict, site):
    """``_measure`` with its wall time and the peak RSS while it ran (``gradflow.memory``)."""
    from .memory import memory_budget, peak_rss_mib, release_free_memory, reset_peak_rss

    release_free_memory()  # what the earlier phases freed is not this phase's
    reset_peak_rss()
    started = time.perf_counter()
    with memory_budget(config.record_memory):  # the spectra products chunk to it too
        frame = _measure(phase, probe, config, plan, site)
    seconds = round(time.perf_counter() - started, 2)
    return frame, {"seconds": seconds, "peak_rss_mib": round(peak_rss_mib())}


def _all_finite(frame: pd.DataFrame) -> bool:
    import numpy as np

    return bool(np.isfinite(frame["value"].to_numpy(dtype=float)).all())


def parse_device(name: str) -> torch.device:
    """A torch device that exists here, else a UserInputError saying what to use."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ParameterError(
            "device", f"device {name!r} is unknown: use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(
            "device", "device cuda asked for, but no CUDA device is available here"
        )
    return device


def analysis_meta(config: AnalysisConfig, dataset: ImageDataset | None, wall_time: float) -> dict:
    """meta.json of an analysis: the run-metadata schema of ``gradflow.provenance``."""
    data = data_meta(dataset) if dataset is not None else unused_data_meta(config)
    return run_meta(asdict(config), data, wall_time, threads=torch.get_num_threads())


def unused_data_meta(config: AnalysisConfig) -> dict:
    """``data`` of meta.json when no model was fed images of the data set."""
    return {
        "name": config.data,
        "description": "none: every model was fed its own inputs (see inputs)",
        "synthetic": False,
    }
