"""The run cache: a training run is trained once per settings, then loaded by every script.

``cached_run(config, cache_dir)`` keys a TrainConfig by a stable hash of the fields that
change the result (not where or how it runs, not its label) and trains it into
``cache_dir/<model>-<init>-<hash>/`` with the trainer's own outputs (checkpoint.pt,
history/records frames, final.pt, meta.json). A folder with meta.json holds a finished run
and is loaded (its checkpoint is deleted when the run ends: final.pt keeps the weights); a
folder with only a checkpoint is an interrupted run and resumes exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd

from gradflow import io as gio
from gradflow.checkpoint import load_state_dict
from gradflow.errors import UserInputError
from gradflow.models.build import build_model
from gradflow.outdir import prepare_run_folder
from gradflow.provenance import meta_data
from gradflow.train import CHECKPOINT, RESUMABLE_CHANGES, TrainConfig, TrainResult, train


def run_key(config: TrainConfig) -> dict:
    """The TrainConfig fields that change the result (not where/how it runs, not its label)."""
    ignored = set(RESUMABLE_CHANGES) | {"label"}
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in ignored}
    values["milestones"] = list(config.milestones)
    return values


def run_dir(config: TrainConfig, cache_dir: str | Path) -> Path:
    """cache_dir/<model>-<init>-<12 hex digits of sha256 of the run key>."""
    text = json.dumps(run_key(config), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{config.model}-{config.init or 'he'}-{digest}"


DONE = "meta.json"  # the trainer writes it last: a folder with it holds a finished run
FAILED = "failed.json"  # a run that diverged: not trained again with the same settings


class RunFailed(UserInputError):
    """A cached run diverged (NaN/Inf loss); the message is the trainer's."""


def cached_run(config: TrainConfig, cache_dir: str | Path) -> TrainResult:
    """Train ``config`` once into its cache folder (resuming a partial run), else load it.

    ``meta["cache"]`` says where the run lives and whether it was ``reused`` (loaded, not
    trained by this call); ``config.label`` only relabels the frames' model column.
    """
    folder = run_dir(config, cache_dir)
    label = config.label or config.model
    if (folder / DONE).exists():
        result = _load_run(folder, config)
        result.meta["cache"] = {"dir": str(folder), "reused": True}
    elif (folder / FAILED).exists():
        raise RunFailed(json.loads((folder / FAILED).read_text())["error"])
    else:
        plain = replace(config, out_dir=str(folder), resume=True, label=None)
        prepare_run_folder(folder, flag="run cache folder")
        gio.write_text(folder / "key.json", json.dumps(run_key(config), indent=2) + "\n")
        try:
            result = train(plain)
        except UserInputError as err:
            if "diverged" not in str(err):
                raise
            gio.write_text(folder / FAILED, json.dumps({"error": str(err)}) + "\n")
            raise RunFailed(str(err)) from None
        result.meta["cache"] = {"dir": str(folder), "reused": False}
        # finished: final.pt holds the weights; the checkpoint (weights + optimizer state, 3x
        # the size) only served to resume, and the run is never extended under this key
        (folder / CHECKPOINT).unlink(missing_ok=True)
    for frame in (result.history, result.records):
        if "model" in frame:
            frame["model"] = label
    return result


def _load_run(folder: Path, config: TrainConfig) -> TrainResult:
    """A finished run from its folder: frames, metadata and the final weights."""
    meta = json.loads((folder / DONE).read_text())
    history = pd.read_parquet(folder / "history.parquet")
    records_path = folder / "records.parquet"
    records = pd.read_parquet(records_path) if records_path.exists() else pd.DataFrame()
    state = load_state_dict(folder / "final.pt")
    classes = [v.shape[0] for k, v in state.items() if k.endswith("fc.weight")]
    options = {
        "in_channels": meta_data(meta)["image_shape"][0],
        "num_classes": classes[-1] if classes else 10,
        "init": config.init,
        "shortcut": config.shortcut,
    }
    model = build_model(config.model, options=options, seed=config.seed)
    model.load_state_dict(state)
    return TrainResult(history, records, model, config, meta)
