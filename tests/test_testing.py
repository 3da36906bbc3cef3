"""gradflow.testing: the assertions users put in their own CI, and the pytest plugin."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import gradflow as gf
import gradflow.testing as gft

pytest_plugins = ["pytester"]


def batch(size: int = 8, shape=(3, 32, 32), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((size, *shape), generator=generator)
    y = torch.randint(0, 10, (size,), generator=generator)
    return x, y


def test_zero_gamma_resnet56_preserves_gradient():
    model = gf.create_model("resnet56", init="zero_gamma")
    x, y = batch()
    with gft.assert_unchanged(model):
        grads = gft.assert_gradient_preserved(model, x, y, max_log10_ratio=1.0)
    assert len(grads) == 28  # the input of block 1 and the output of each of 27 blocks


def test_he_plain110_fails_and_names_where():
    model = gf.create_model("plain110")
    x, y = batch()
    with pytest.raises(AssertionError) as failure:
        gft.assert_gradient_preserved(model, x, y, max_log10_ratio=1.0)
    message = str(failure.value)
    assert "max_log10_ratio=1.0" in message
    assert re.search(r"bound first breaks at depth \d+ \(stage\d\.block\d+\)", message)
    assert "<-- bound broken here" in message
    assert "relax the bound" in message


def test_bound_is_respected_on_both_sides():
    model = gf.create_model("plain20")
    x, y = batch()
    grads = gft.gradient_norms(model, x, y)
    logs = grads["value"].map(math.log10)
    spread = logs.max() - logs.min()
    gft.assert_gradient_preserved(model, x, y, max_log10_ratio=spread + 1e-6)
    with pytest.raises(AssertionError, match="gradient not preserved"):
        gft.assert_gradient_preserved(model, x, y, max_log10_ratio=spread - 1e-6)


def test_assert_unchanged_catches_a_change_and_names_it():
    model = gf.create_model("resnet20")
    weight = model.stage1.block1.conv1.weight
    changed = pytest.raises(AssertionError, match=r"stage1\.block1\.conv1\.weight")
    with changed, gft.assert_unchanged(model), torch.no_grad():
        weight.add_(1.0)
    with pytest.raises(AssertionError, match="running_mean"), gft.assert_unchanged(model):
        model.train()(torch.randn(4, 3, 32, 32))  # BN statistics move
    with pytest.raises(AssertionError, match="hook"), gft.assert_unchanged(model):
        model.fc.register_forward_hook(lambda *args: None)


def test_response_std_bounds():
    model = gf.create_model("resnet20")
    x, _ = batch()
    stds = gft.assert_response_std_bounded(model, x, low=0.1, high=10.0)
    assert len(stds) == 19  # the paper's Figure 7 layers: every 3x3 conv (6n + 1)
    with pytest.raises(AssertionError, match=r"outside \[2.0, 10.0\]"):
        gft.assert_response_std_bounded(model, x, low=2.0, high=10.0)


def test_dynamical_isometry_on_functions_and_models():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    gft.assert_dynamical_isometry(lambda v: q @ v, torch.randn(12, dtype=torch.float64), 1e-6)
    scales = torch.logspace(0, 3, 12, dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"log10 condition number 3\.00"):
        gft.assert_dynamical_isometry(lambda v: scales * v, torch.ones(12, dtype=torch.float64))
    model = gf.create_model("resnet20", init="zero_gamma")
    x, _ = batch(2)
    frame = gft.assert_dynamical_isometry(model, x, max_log10_condition=6.0, depth=3)
    assert set(frame["operator"]) == {"prod"}


USER_TEST = """
import gradflow as gf
import gradflow.testing as gft

def test_resnet_keeps_gradient(gradflow_probe_batch):
    model = gf.create_model("resnet20", init="zero_gamma")
    x, y = gradflow_probe_batch("resnet20", batch_size=4)
    assert x.shape == (4, 3, 32, 32)
    gft.assert_gradient_preserved(model, x, y, max_log10_ratio=1.0)

def test_plain_fails(gradflow_probe_batch):
    model = gf.create_model("plain110")
    x, y = gradflow_probe_batch("plain110", batch_size=4)
    gft.assert_gradient_preserved(model, x, y, max_log10_ratio=0.5)
"""


def test_pytest_plugin_fixture_option_and_failure_message(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    report_dir = pytester.path / "gf-report"
    result = pytester.runpytest_subprocess(
        f"--gradflow-report={report_dir}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*gradient not preserved*", "*bound broken here*"])
    result.stdout.fnmatch_lines(["*gradflow: 2 assertion frame(s) saved in*"])
    index = pd.read_csv(report_dir / "index.csv")
    assert list(index["passed"]) == [True, False]
    for name in index["file"]:
        frame = pd.read_csv(report_dir / name)
        assert {"layer", "depth", "quantity", "value"} <= set(frame.columns)


def readme_example() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Gradient regression tests", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_regression_example_runs(pytester):
    pytester.makepyfile(test_readme_example=readme_example())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
