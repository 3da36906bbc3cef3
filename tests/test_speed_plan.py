"""The work plan of `gradflow analyze` (gradflow.budget, gradflow.memory): counted costs, the
reductions for large models, and that every reduction is written down (meta, report, verdict)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import gradflow.budget as budget
from gradflow.analyze import analyze, torch_threads
from gradflow.memory import default_batch_size, forward_gflop
from gradflow.models.build import build_model
from gradflow.testing import assert_unchanged


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # as analyze runs (two threads on a busy machine: 10x slower)
        yield


def config(**changes):
    base = dict(samples=None, which="auto", k=8, depths="auto")
    return SimpleNamespace(**{**base, **changes})


def test_forward_gflop_counts_the_multiply_adds_of_one_sample():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    x = torch.randn(5, 10)
    with assert_unchanged(model):
        gflop = forward_gflop(model, x)
    assert gflop == pytest.approx(2 * (10 * 20 + 20 * 3) / 1e9)  # one sample, 2 FLOP per MAC
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)  # 4 x 8 x 8 outputs, 27 MACs each
    assert forward_gflop(conv, torch.randn(2, 3, 8, 8)) == pytest.approx(2 * 4 * 64 * 27 / 1e9)


def test_the_zoo_cifar_nets_get_the_default_plan():
    model = build_model("resnet56")
    x = torch.randn(4, 3, 32, 32)
    plan = budget.spectra_plan("resnet56", model, x, config(), forward_gflop(model, x))
    assert (plan["samples"], plan["which"], plan["reduced"]) == (2, "both", [])
    assert plan["depths"] == [1, 9, 18, 27] and plan["blocks"] == 27
    assert plan["max_matvecs"] == 128  # block_spectra's default
    assert plan["estimate_gflop"] == plan["default_estimate_gflop"] < plan["budget_gflop"]
    assert plan["forward_gflop_per_sample"] == pytest.approx(0.251, abs=1e-3)


def test_an_imagenet_net_at_224_is_planned_within_the_budget_and_says_so():
    assert default_batch_size((3, 224, 224)) == 8
    model = build_model("resnet18")  # the ImageNet ResNet-18 (resnet50: the same plan, slower)
    x = torch.randn(2, 3, 224, 224)
    plan = budget.spectra_plan("resnet18", model, x, config(), forward_gflop(model, x))
    # torchvision lists 1.814 GMACs; the counter takes convolutions and the fc, not BN or pooling
    assert plan["forward_gflop_per_sample"] == pytest.approx(2 * 1.814, rel=0.02)
    assert plan["default_estimate_gflop"] > 10 * plan["budget_gflop"]
    assert (plan["samples"], plan["which"]) == (1, "largest")
    assert plan["reduced"][:3] == [
        "samples 2 -> 1",
        "which both -> largest (smallest not measured)",
        "depths 1,2,4,6,8 -> 1,8",  # the first and the last block only
    ]
    assert plan["reduced"][3].startswith("Krylov budget 128 -> 34 products per operator")
    assert plan["depths"] == [1, 8] and plan["max_matvecs"] == 34
    assert plan["estimate_gflop"] <= plan["budget_gflop"]  # the cut Krylov budget fits
    (line,) = budget.spectra_lines({"spectra": [plan]})
    assert "resnet18" in line and "--samples and --which both" in line


def test_a_value_the_user_gives_is_used_as_given():
    model = build_model("resnet56")
    x = torch.randn(4, 3, 32, 32)
    over = config(samples=2, which="both")
    plan = budget.spectra_plan("resnet56", model, x, over, gflop=1000.0)  # far over budget
    assert (plan["samples"], plan["which"], plan["reduced"]) == (2, "both", [])


class TinyResidual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(12, 12), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def test_a_reduced_plan_is_in_meta_report_and_verdict(monkeypatch, tmp_path):
    monkeypatch.setattr(budget, "SPECTRA_BUDGET_GFLOP", 1e-9)  # every model is over budget
    model = TinyResidual()
    options = dict(input_shape="12", loss="mse", batch_size=4, k=2, progress=False)
    with assert_unchanged(model):
        result = analyze({"tiny": model}, **options)
    (plan,) = result.meta["spectra"]
    assert (plan["samples"], plan["which"]) == (1, "largest")
    assert plan["depths"] == [1, 3] and plan["max_matvecs"] == budget.MIN_KRYLOV_PRODUCTS
    spectra = result.spectra
    assert set(spectra["sample"]) == {0}
    assert (spectra["index"] < 2).all()  # the top 2 only: no bottom rows
    row = result.summary.iloc[0]
    assert math.isnan(row["prod_smallest"]) and math.isnan(row["prod_log10_condition"])
    assert np.isfinite(row["prod_largest"])
    (verdict,) = result.verdicts()
    assert "smallest singular values not measured" in verdict
    assert "rank-deficient" not in verdict
    html = (result.save(tmp_path / "report") / "report.html").read_text()
    assert "the 2 largest singular values per operator" in html
    assert "which both -&gt; largest" in html or "which both -> largest" in html
    assert "Krylov budget 128 -&gt; 32" in html or "Krylov budget 128 -> 32" in html


def test_the_default_plan_keeps_both_ends_and_two_samples():
    model = TinyResidual()
    options = dict(input_shape="12", loss="mse", batch_size=4, k=2, progress=False)
    result = analyze({"tiny": model}, **options)
    (plan,) = result.meta["spectra"]
    assert (plan["samples"], plan["which"], plan["reduced"]) == (2, "both", [])
    assert set(result.spectra["sample"]) == {0, 1}
    assert np.isfinite(result.summary.iloc[0]["prod_smallest"])
    sentence = budget.spectra_sentence(result.meta)  # the report's words, as before the plan
    expected = "spectra on the first 2 of them, the 2 largest and 2 smallest singular values"
    assert sentence == expected + " per operator"
