"""pytest plugin (entry point ``pytest11``): probe-batch fixtures and ``--gradflow-report``.

Installed with gradflow, it is active in every pytest run of an environment that has it:

- ``gradflow_probe_batch(model_name_or_shape, batch_size=8, num_classes=10, seed=0)``: a
  seeded (x, y) batch of the model's input shape (registry names know theirs);
- ``--gradflow-report DIR``: saves the frame behind every gradflow assertion of the run as
  ``DIR/<test>__<assertion>.csv`` plus ``DIR/index.csv`` listing them, for inspection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradflow")
    group.addoption(
        "--gradflow-report",
        metavar="DIR",
        default=None,
        help="save the frames behind every gradflow assertion into DIR (CSV + index.csv)",
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:150]


class _ReportCollector:
    """Moves each test's collected frames to disk after the test; writes the index at exit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index: list[dict] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        from .testing import drain_collected

        drain_collected()
        outcome = yield
        passed = outcome.excinfo is None
        for n, (assertion, frame) in enumerate(drain_collected()):
            from . import io as gio

            name = f"{_slug(item.nodeid)}__{assertion}"
            if n:
                name += f"_{n}"
            path = self.directory / f"{name}.csv"
            gio.write_text(path, frame.to_csv(index=False))
            self.index.append(
                {"test": item.nodeid, "assertion": assertion, "passed": passed, "file": path.name}
            )

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        import pandas as pd

        from . import io as gio

        frame = pd.DataFrame(self.index, columns=["test", "assertion", "passed", "file"])
        gio.write_text(self.directory / "index.csv", frame.to_csv(index=False))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.write_line(
            f"gradflow: {len(self.index)} assertion frame(s) saved in {self.directory}"
        )


def pytest_configure(config: pytest.Config) -> None:
    directory = config.getoption("--gradflow-report", default=None)
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config.pluginmanager.register(_ReportCollector(path), "gradflow-report-collector")


@pytest.fixture
def gradflow_probe_batch() -> Callable:
    """Factory: a seeded (x, y) probe batch for a registry model name or an input shape."""
    import torch

    def make(
        model_or_shape: str | tuple[int, ...],
        batch_size: int = 8,
        num_classes: int = 10,
        seed: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(model_or_shape, str):
            from .models import get_model_info

            shape = get_model_info(model_or_shape).input_size
        else:
            shape = tuple(model_or_shape)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((batch_size, *shape), generator=generator)
        y = torch.randint(0, num_classes, (batch_size,), generator=generator)
        return x, y

    return make
