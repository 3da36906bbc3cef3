"""Running the gradflow CLI as a user does (a subprocess) and checking its user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TINY = ["--batch-size", "16", "--samples", "1", "--k", "2", "--depths", "1,9", "--quiet"]


def gradflow(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m gradflow ARGS`` in ``cwd``; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "gradflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, no traceback, and every fragment in the one-line message."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
