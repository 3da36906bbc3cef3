"""Non-finite models: the module where NaN/Inf first appears, named before the long phases,
NaN summary cells, a verdict that says so (never "rank-deficient"), a report and no traceback."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.finite import locate_nonfinite
from gradflow.testing import assert_unchanged

NAN_MLP = """
from collections import OrderedDict

import torch
from torch import nn


def build():
    torch.manual_seed(0)
    layers = [("flat", nn.Flatten()), ("fc1", nn.Linear(3 * 8 * 8, 16)), ("act1", nn.ReLU())]
    for i in range(2, 6):
        layers += [(f"fc{i}", nn.Linear(16, 16)), (f"act{i}", nn.ReLU())]
    net = nn.Sequential(OrderedDict([*layers, ("head", nn.Linear(16, 10))]))
    with torch.no_grad():
        net.fc3.weight[2, 3] = float("nan")  # the 3rd Linear
    return net
"""

# conv3 and conv4 scaled by 1e20: conv3's output (~1e19) is finite, conv4's overflows float32.
OVERFLOW_CNN = """
from collections import OrderedDict

import torch
from torch import nn


def build():
    torch.manual_seed(0)
    layers = []
    for i in range(1, 7):
        layers += [(f"conv{i}", nn.Conv2d(3 if i == 1 else 8, 8, 3, padding=1)),
                   (f"relu{i}", nn.ReLU())]
    net = nn.Sequential(OrderedDict([*layers, ("flat", nn.Flatten()),
                                     ("head", nn.Linear(8 * 8 * 8, 10))]))
    with torch.no_grad():
        net.conv3.weight.mul_(1e20)
        net.conv4.weight.mul_(1e20)
    return net
"""

TINY = ["--input-shape", "3,8,8", "--batch-size", "8", "--samples", "1", "--k", "2", "--quiet"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One `gradflow analyze` of both model files (one subprocess: the imports cost most)."""
    folder = tmp_path_factory.mktemp("nonfinite")
    (folder / "nan_mlp.py").write_text(textwrap.dedent(NAN_MLP))
    (folder / "overflow_cnn.py").write_text(textwrap.dedent(OVERFLOW_CNN))
    out = folder / "report"
    result = subprocess.run(
        [sys.executable, "-m", "gradflow", "analyze", "--model", "nan_mlp.py:build",
         "--model", "overflow_cnn.py:build", "--out", str(out), *TINY],
        capture_output=True, text=True, timeout=900, cwd=folder,
    )  # fmt: skip
    return result, out


def verdict_line(stdout: str, label: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(f"{label}: ")]
    (line,) = [line for line in lines if not line.startswith("Record batch of")]  # the verdict
    return line


def assert_nonfinite_summary(summary: pd.DataFrame, label: str | None = None) -> None:
    row = summary.iloc[0] if label is None else summary.set_index("model").loc[label]
    for cell in ("grad_log10_ratio", "prod_largest", "prod_rms", "prod_log10_condition"):
        assert not math.isfinite(row[cell]), cell


def test_cli_completes_with_a_report_and_no_traceback(cli_run):
    result, out = cli_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "the point x contains NaN" not in result.stdout + result.stderr
    assert "rank-deficient" not in result.stdout and "inactive ReLU" not in result.stdout
    html = (out / "report.html").read_text()
    assert "`fc3`" in html and "`conv4`" in html


def test_cli_names_the_linear_with_a_nan_weight(cli_run):
    result, out = cli_run
    line = verdict_line(result.stdout, "nan_mlp.py:build")
    assert "NOT FINITE" in line and "the output of `fc3` (Linear)" in line
    assert "weight (1 NaN of 256)" in line
    assert_nonfinite_summary(pd.read_csv(out / "data" / "summary.csv"), "nan_mlp.py:build")
    sites = {s["model"]: s for s in json.loads((out / "meta.json").read_text())["nonfinite"]}
    site = sites["nan_mlp.py:build"]
    assert (site["stage"], site["module"], site["kind"]) == ("forward", "fc3", "Linear")


def test_cli_names_the_conv_whose_output_overflows(cli_run):
    result, out = cli_run
    line = verdict_line(result.stdout, "overflow_cnn.py:build")
    assert "NOT FINITE" in line and "the output of `conv4` (Conv2d)" in line
    assert "overflows float32" in line
    assert_nonfinite_summary(pd.read_csv(out / "data" / "summary.csv"), "overflow_cnn.py:build")
    sites = {s["model"]: s for s in json.loads((out / "meta.json").read_text())["nonfinite"]}
    assert sites["overflow_cnn.py:build"]["module"] == "conv4"
    assert "Inf" in sites["overflow_cnn.py:build"]["detail"]


def _exec(source: str) -> nn.Module:
    scope: dict = {}
    exec(textwrap.dedent(source), scope)  # the test's own model source
    return scope["build"]()


def test_library_analyze_marks_the_model_and_leaves_it_unchanged():
    model = _exec(NAN_MLP)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with assert_unchanged(model):
        result = gf.analyze(
            [("mlp", model)], input_shape="3,8,8", batch_size=6, samples=1, k=2, progress=False
        )
        model(x)  # still callable as before
    assert "`fc3` (Linear)" in result.summary.loc[0, "nonfinite"]
    assert_nonfinite_summary(result.summary)
    (verdict,) = result.verdicts()
    assert verdict.startswith("mlp: NOT FINITE") and "rank-deficient" not in verdict
    assert result.spectra.empty
    assert result.meta["nonfinite"][0]["module"] == "fc3"


def test_finite_model_has_an_empty_nonfinite_column():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8), nn.ReLU(), nn.Linear(8, 10))
    result = gf.analyze(
        [("ok", model)], input_shape="3,8,8", batch_size=6, samples=1, k=2, progress=False
    )
    assert result.summary.loc[0, "nonfinite"] == ""
    assert result.meta["nonfinite"] == []
    assert "NOT FINITE" not in result.verdicts()[0]


class Sqrt(nn.Module):
    def forward(self, x):
        return x.sqrt()  # d sqrt(x)/dx = inf at the zeros ReLU makes


def test_backward_only_names_the_first_nonfinite_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), Sqrt(), nn.Linear(10, 3))
    x, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 0])
    assert torch.isfinite(model(x)).all()
    site = locate_nonfinite(model, [(x, y)])
    assert site.stage == "backward"
    assert (site.module, site.kind) == ("1", "ReLU")  # dL/d(ReLU output) is the first inf
    assert "Inf" in site.detail
    assert "backward pass at dL/d(output of `1` (ReLU))" in site.sentence()


def test_batchnorm_whose_variance_overflows_is_found_though_its_output_is_finite():
    model = gf.create_model("resnet20")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e10)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    site = locate_nonfinite(model, [(x, torch.tensor([0, 1, 2, 3]))])
    assert (site.stage, site.kind) == ("forward", "BatchNorm2d")
    assert site.module == "stage1.block1.bn1"
    assert "running_var" in site.cause and "overflows float32" in site.cause


@pytest.mark.parametrize("scale", [float("inf"), float("nan")])
def test_a_nonfinite_buffer_is_blamed_on_its_module(scale):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].running_var[0] = scale
    site = locate_nonfinite(model, [(torch.randn(3, 4), torch.tensor([0, 1, 0]))])
    assert (site.module, site.kind) == ("1", "BatchNorm1d")
    assert "running_var" in site.cause and "already non-finite" in site.cause


def test_all_finite_gives_none():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    assert locate_nonfinite(model, [(torch.randn(3, 4), torch.tensor([0, 1, 0]))]) is None
