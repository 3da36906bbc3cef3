"""Training checkpoints: atomic writes, safe loads (tensors and plain Python only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

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


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by ``save_checkpoint`` (tensors and plain Python only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file
        raise UserInputError(f"cannot load checkpoint {path}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserInputError(f"{path} is not a gradflow training checkpoint")
    return state
