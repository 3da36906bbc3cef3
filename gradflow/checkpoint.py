"""Checkpoints: atomic writes, and the one safe loader (``weights_only=True``) of every reader.

``load_checkpoint`` reads a training checkpoint (``gradflow train``'s checkpoint.pt);
``load_weights`` puts the weights of any checkpoint (a raw state dict, or one under
"model" as ``gradflow train`` writes checkpoint.pt and final.pt) into a model.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .errors import UserInputError
from .io import atomic_path

CHECKPOINT_FORMAT = 1


def frame_to_columns(frame: pd.DataFrame) -> dict[str, list]:
    """A frame as plain lists (what ``torch.load(weights_only=True)`` accepts)."""
    return {c: [None if pd.isna(v) else v for v in frame[c].tolist()] for c in frame.columns}


def columns_to_frame(columns: dict[str, list]) -> pd.DataFrame:
    """Inverse of ``frame_to_columns`` (restores the Recorder's nullable Int64 columns)."""
    frame = pd.DataFrame(columns)
    for column in ("stage", "block"):  # the Recorder's nullable integer columns
        if column in frame:
            frame[column] = pd.array(frame[column], dtype="Int64")
    return frame


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file beside ``path``, then rename: never a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load(path: Path) -> object:
    """``torch.load`` with tensors and plain Python only: a checkpoint never runs code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file
        raise UserInputError(f"cannot load checkpoint {path}: {err}") from None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by ``save_checkpoint`` (tensors and plain Python only)."""
    state = _load(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserInputError(f"{path} is not a gradflow training checkpoint")
    return state


def load_state_dict(path: str | Path) -> dict:
    """The model state dict in ``path``: a raw state dict, or the one under "model"."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} does not exist")
    state = _load(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UserInputError(f"checkpoint {path} holds no state dict")
    return state


def load_weights(model: nn.Module, path: str | Path, name: str) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (called ``name`` in the error message)."""
    try:
        model.load_state_dict(load_state_dict(path))
    except RuntimeError as err:
        first = str(err).split("\n")[1:3]
        raise UserInputError(
            f"checkpoint {path} does not match model {name}: " + " ".join(s.strip() for s in first)
        ) from None
    return model
