"""Report layer: figures read tidy frames only; HTML is self-contained; writes are atomic."""

from __future__ import annotations

import base64
import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from gradflow import io as gio
from gradflow.report import (
    Report,
    Section,
    activation_grad_figure,
    block_spectra_figure,
    cumulative_spectra_figure,
    response_std_figure,
)


def records_frame(models=("plain8", "resnet8"), blocks=3) -> pd.DataFrame:
    rows = []
    for m, model in enumerate(models):
        for depth in range(blocks + 1):
            rows.append((model, 0, f"b{depth}", depth, "activation_grad_norm", 10.0 ** (m - depth)))
        for depth in range(1, 2 * blocks + 2):
            rows.append((model, 0, f"l{depth}.bn", depth, "response_std", 1.0 / depth + m))
    frame = pd.DataFrame(rows, columns=["model", "step", "layer", "depth", "quantity", "value"])
    frame["stage"] = pd.array([1] * len(frame), dtype="Int64")
    frame["block"] = pd.array([1] * len(frame), dtype="Int64")
    frame["kind"] = "other"
    return frame


def spectra_frames(models=("plain8", "resnet8"), blocks=3):
    rows = []
    for model in models:
        operator = "J_H" if model.startswith("plain") else "I+J_F"
        for depth in range(1, blocks + 1):
            for index, sigma in enumerate([2.0 * depth, 1.0, 0.5 / depth]):
                rows.append((model, 0, depth, f"b{depth}", operator, 0, index, sigma))
                rows.append((model, 0, depth, f"b{depth}", "prod", 0, index, sigma**depth))
    spectra = pd.DataFrame(
        rows, columns=["model", "step", "depth", "block", "operator", "sample", "index", "sigma"]
    )
    summary = (
        spectra.groupby(["model", "step", "operator", "depth", "sample"])["sigma"]
        .agg(largest="max", smallest="min", median="median")
        .reset_index()
    )
    return spectra, summary


def test_figures_draw_from_frames_only():
    records = records_frame()
    spectra, summary = spectra_frames()
    for fig in (
        activation_grad_figure(records),
        response_std_figure(records),
        cumulative_spectra_figure(summary),
        block_spectra_figure(spectra),
    ):
        assert fig.axes and all(ax.get_xlabel() for ax in fig.axes if ax.has_data())
    ax = activation_grad_figure(records).axes[0]
    assert ax.get_yscale() == "log"
    assert "block boundary" in ax.get_xlabel()


def test_report_html_is_self_contained_and_markdown_links_pngs(tmp_path):
    records = records_frame()
    table = pd.DataFrame({"model": ["a", "b"], "value": [1.23456, np.nan]})
    report = Report(
        "A <test> report",
        [
            Section("Numbers", ["first paragraph & more"], table=table),
            Section("Pictures", figures=[("grad", activation_grad_figure(records), "caption")]),
        ],
    )
    written = report.write(tmp_path, markdown_name="README.md")
    html = (tmp_path / "report.html").read_text()
    assert "A &lt;test&gt; report" in html and "first paragraph &amp; more" in html
    assert "http" not in html  # nothing fetched when opened offline
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 1
    assert base64.b64decode(images[0]) == (tmp_path / "figures" / "grad.png").read_bytes()
    assert mpimg.imread(tmp_path / "figures" / "grad.png").shape[2] in (3, 4)
    markdown = (tmp_path / "README.md").read_text()
    assert "![caption](figures/grad.png)" in markdown and "| model | value |" in markdown
    assert set(written) == {
        tmp_path / "figures" / "grad.png",
        tmp_path / "report.html",
        tmp_path / "README.md",
    }


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path):
    target = tmp_path / "out.txt"
    gio.write_text(target, "old")
    with pytest.raises(RuntimeError), gio.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind
    assert target.stat().st_mode & 0o044  # readable by others, like any file the user writes


def test_write_frame_is_byte_reproducible(tmp_path):
    frame = records_frame()
    first = [p.read_bytes() for p in gio.write_frame(frame, tmp_path / "a", "records")]
    second = [p.read_bytes() for p in gio.write_frame(frame.copy(), tmp_path / "b", "records")]
    assert first == second
    back = pd.read_parquet(tmp_path / "a" / "records.parquet")
    pd.testing.assert_frame_equal(back, frame)
