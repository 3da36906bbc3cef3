"""Atomic file writes: a killed run leaves either the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

# Temporaries are named ``.<target>.gradflow-<random>.tmp``: only such files are ever removed.
TEMP_INFIX = ".gradflow-"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}{TEMP_INFIX}", suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the ``.<name>.gradflow-<random>.tmp`` files that ``atomic_path`` leaves in
    ``directory`` when its process is killed mid-write (SIGKILL skips the cleanup); other
    ``.tmp`` files (the user's) are never touched. Only the process that owns the directory
    may call this, before it writes there again."""
    removed = []
    for stale in Path(directory).glob(f".*{TEMP_INFIX}*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_frame(frame: pd.DataFrame, directory: str | Path, name: str) -> list[Path]:
    """Write ``name.parquet`` and ``name.csv`` atomically; identical frames give identical bytes."""
    directory = Path(directory)
    parquet, csv = directory / f"{name}.parquet", directory / f"{name}.csv"
    with atomic_path(parquet) as tmp:
        frame.to_parquet(tmp, index=False)
    with atomic_path(csv) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.9g")
    return [parquet, csv]
