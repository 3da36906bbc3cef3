"""Output folders that gradflow owns: recognised, locked, staged and replaced safely.

Every folder gradflow writes (an analysis report, a training run) carries a small marker
file, ``.gradflow-output``, naming what wrote it. Only such a folder is ever replaced
(``--force``) or written into again (a training run resumed); a folder holding anything
else is refused before any work starts. A report is built in a hidden staging sibling,
``.<name>.partial-<pid>``, and moved onto its target in one rename at the end, under a lock
file ``.<name>.gradflow-lock`` taken when the run starts, so that of two runs aimed at
one folder exactly one writes it and the other stops at once with a message. Staging
folders and locks left by killed processes are recognised by their dead pid and removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import UserInputError
from .io import TEMP_INFIX

MARKER = ".gradflow-output"
KINDS = ("analysis-report", "train-run")
STAGING_INFIX = ".partial-"
LOCK_SUFFIX = ".gradflow-lock"


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def mark(folder: Path, kind: str) -> None:
    """Write the marker that says gradflow wrote ``folder`` (and what it holds)."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    (folder / MARKER).write_text(json.dumps({"written_by": "gradflow", "kind": kind}) + "\n")


def owner_kind(folder: Path) -> str | None:
    """The kind gradflow recorded in ``folder``'s marker, or None if gradflow did not write it."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "gradflow":
        return None
    kind = data.get("kind")
    return kind if kind in KINDS else None


def _is_empty_dir(folder: Path) -> bool:
    return folder.is_dir() and not any(folder.iterdir())


def check_target(out: Path, kind: str, *, force: bool, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder gradflow may not write.

    Allowed: a path that does not exist yet (its first existing parent a writable folder),
    an empty folder, or, with ``force``, a folder gradflow wrote for the same ``kind``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{flag} {out} is a file; give a folder path")
    if out.exists() and not _is_empty_dir(out):
        if owner_kind(out) != kind:
            raise UserInputError(
                f"{flag} {out} holds files gradflow did not write; gradflow never replaces "
                "such a folder, even with --force: choose a new or empty folder"
            )
        if not force:
            raise UserInputError(
                f"{flag} {out} holds an earlier gradflow {kind.replace('-', ' ')}; "
                "pass --force to replace it, or choose another folder"
            )
    _check_writable(out, flag)


def _check_writable(out: Path, flag: str) -> None:
    """The first existing ancestor of ``out`` must be a folder we may create entries in."""
    parent = out.resolve().parent if not out.exists() else out.resolve()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserInputError(f"{flag} {out}: {parent} is a file, so the folder cannot be made")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {out}: {parent} is not writable; choose another folder")


def _staging_pid(path: Path, name: str) -> int | None:
    """The pid in a staging folder name ``.<name>.partial-<pid>``, else None."""
    prefix = f".{name}{STAGING_INFIX}"
    if not path.name.startswith(prefix):
        return None
    suffix = path.name[len(prefix) :]
    return int(suffix) if suffix.isdigit() else None


def remove_stale_staging(out: Path) -> list[Path]:
    """Delete the staging folders of ``out`` whose process is gone (a SIGKILL mid-save)."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.glob(f".{out.name}{STAGING_INFIX}*"):
        pid = _staging_pid(path, out.name)
        if pid is None or pid_alive(pid) or not path.is_dir():
            continue
        if owner_kind(path) is None and not _is_empty_dir(path):
            continue  # not recognisably ours: leave it
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def output_lock(out: Path, flag: str = "--out") -> Iterator[Path]:
    """Hold ``.<name>.gradflow-lock`` beside ``out`` for the whole run (one writer at a time).

    A lock whose pid is dead (the run was killed) is taken over; a live one is refused with
    a message. The lock file is created with O_EXCL, so two runs cannot both take it. A
    nested call in the process that holds the lock passes through.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}{LOCK_SUFFIX}"
    if _lock_holder(lock) == os.getpid():  # this process holds it already (nested use)
        yield lock
        return
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None and pid_alive(holder):
                raise UserInputError(
                    f"another gradflow run (pid {holder}) is writing {flag} {out}; "
                    "wait for it to finish or choose another folder"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # left by a killed run
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        break
    else:
        raise UserInputError(f"could not lock {flag} {out}: {lock} keeps reappearing")
    try:
        yield lock
    finally:
        if _lock_holder(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def _lock_holder(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def staging_dir(out: Path, kind: str) -> Path:
    """A fresh, marked staging folder beside ``out`` for this process."""
    out = Path(out)
    remove_stale_staging(out)
    staging = out.with_name(f".{out.name}{STAGING_INFIX}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    mark(staging, kind)
    return staging


def publish(staging: Path, out: Path, kind: str, *, force: bool, flag: str = "--out") -> Path:
    """Move a finished staging folder onto ``out`` (replacing only gradflow's own folder).

    The target is checked again (it may have changed during the run); an old report is
    first moved aside, so that a kill at any point leaves the old or the new folder.
    """
    out = Path(out)
    check_target(out, kind, force=force, flag=flag)
    aside = None
    if out.exists():
        if _is_empty_dir(out):
            out.rmdir()
        else:
            aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            shutil.rmtree(aside, ignore_errors=True)
            out.rename(aside)
    try:
        staging.rename(out)
    except OSError as err:
        if aside is not None:
            aside.rename(out)
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise UserInputError(
                f"{flag} {out} appeared during the run; nothing replaced"
            ) from None
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return out


# What ``gradflow train`` and the run cache write into a run folder (a legacy folder,
# written before markers existed, holds nothing else).
RUN_FILES = frozenset(
    {"key.json", "checkpoint.pt", "final.pt", "meta.json", "failed.json"}
    | {f"{name}.{ext}" for name in ("history", "records") for ext in ("csv", "parquet")}
)


def _legacy_run_folder(folder: Path) -> bool:
    names = {path.name for path in folder.iterdir() if TEMP_INFIX not in path.name}
    return bool(names & {"key.json", "checkpoint.pt"}) and names <= RUN_FILES


def prepare_run_folder(folder: Path, *, flag: str = "--out") -> None:
    """Refuse a training-run folder gradflow did not write; create and mark a new one.

    A legacy run folder (written before markers existed) is recognised by holding only the
    files a run writes; it is marked on first use.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{flag} {folder} is a file; give a folder path")
    in_use = folder.exists() and not _is_empty_dir(folder)
    if in_use and owner_kind(folder) != "train-run" and not _legacy_run_folder(folder):
        raise UserInputError(
            f"{flag} {folder} holds files gradflow did not write; choose a new or empty "
            "folder for the run"
        )
    _check_writable(folder, flag)
    folder.mkdir(parents=True, exist_ok=True)
    if owner_kind(folder) is None:
        mark(folder, "train-run")
