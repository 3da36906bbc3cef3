"""`analyze(..., hessian=True)` and `gradflow analyze --hessian`: per-block and whole-net
curvature equal to `gf.hessian_spectra` on the same sub-batch, for a zoo net and a user MLP;
the model is never changed; the CLI writes the frame, the figures and the phase's seconds."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.analyze_hessian import BUDGET, parameter_blocks
from gradflow.configs import AnalysisConfig
from gradflow.losses import resolve_loss
from gradflow.model_inputs import OnDemand, probe_for, synthetic_images
from gradflow.testing import assert_unchanged

ANALYZE = importlib.import_module("gradflow.analyze")  # the module, not gf.analyze
FAST = dict(batch_size=8, samples=1, k=1, depths="1", progress=False, hessian_batch=4)


@pytest.fixture(autouse=True)
def small_dataset(monkeypatch):
    """analyze's measurement data set: 20 synthetic 8x8 images, not 2,000 32x32 (seconds)."""
    small = synthetic_images((3, 8, 8), 20, seed=0)
    monkeypatch.setattr(ANALYZE, "measurement_dataset", lambda config: small)


def _probe(label: str, model: nn.Module, **options):
    """The probe batch ``analyze`` builds for ``model`` with these options."""
    config = AnalysisConfig([label], **{**FAST, **options})
    data = OnDemand(lambda: ANALYZE.measurement_dataset(config))
    return probe_for(label, model, config, data, torch.device("cpu"))


def _expected(model, x, y, blocks, **options) -> pd.DataFrame:
    """`gf.hessian_spectra` with the --hessian budget: whole net, then the given blocks."""
    common = dict(k=1, tol=BUDGET.tol, seed=0, **options)
    whole = gf.hessian_spectra(
        model, x, y, blocks=None, max_matvecs=BUDGET.whole_steps,
        density_steps=BUDGET.whole_steps, trace_probes=BUDGET.whole_probes, **common,
    )  # fmt: skip
    per_block = gf.hessian_spectra(
        model, x, y, blocks=blocks, quantities=(), block_quantities=("eigenvalue", "trace"),
        max_matvecs=BUDGET.block_matvecs, trace_probes=BUDGET.block_probes, **common,
    )  # fmt: skip
    return pd.concat([whole, per_block], ignore_index=True)


def _values(frame: pd.DataFrame) -> pd.Series:
    rows = frame[frame.quantity.isin(["eigenvalue", "trace"])]
    return rows.set_index(["block", "quantity"]).value.sort_index()


@pytest.mark.slow  # 500-600 s on this overloaded 2-core machine (load ~22)
def test_zoo_net_blocks_and_values_equal_hessian_spectra():
    torch.manual_seed(0)
    model = gf.create_model("resnet8")
    with assert_unchanged(model):
        result = gf.analyze({"net": model}, hessian=True, input_shape="3,8,8", **FAST)
    frame = result.hessian
    assert set(frame.step) == {0} and set(frame.bn) == {"train"}
    blocks = [b for b in dict.fromkeys(frame.block) if b != "all"]
    assert blocks == ["stem", "stage1.block1", "stage2.block1", "stage3.block1", "head"]
    kinds = frame.drop_duplicates("block").set_index("block").kind
    assert list(kinds[blocks]) == ["other", "residual", "residual", "residual", "other"]
    assert list(frame.drop_duplicates("block").stage.dropna()) == [1, 2, 3]
    probe = _probe("net", model, input_shape="3,8,8")
    x, y = probe.inputs[:4], probe.targets[:4]
    # gf.structure's blocks give the zoo's own grouping (stem, blocks, head: blocks="all")
    expected = _expected(model, x, y, "all")
    pd.testing.assert_series_equal(_values(frame), _values(expected), rtol=1e-4)  # float32
    whole = frame[(frame.block == "all") & (frame.quantity == "eigenvalue")]
    assert whole.value.iloc[0] > 0 and whole.params.iloc[0] == sum(
        p.numel() for p in model.parameters()
    )
    density = frame[(frame.block == "all") & (frame.quantity == "density")]
    assert np.trapezoid(density.value, density.grid) == pytest.approx(1.0, abs=1e-3)
    phases = [t["phase"] for t in result.meta["phase_seconds"]]
    assert phases == ["record", "spectra", "hessian"]
    assert result.meta["hessian"]["bn"] == "train"
    assert result.meta["hessian"]["sub_batch"] == {"net": 4}


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
        nn.Linear(8, 3),
    )  # fmt: skip


def test_user_mlp_equals_hessian_spectra_and_the_dense_hessian():
    model = _mlp()
    options = dict(input_shape="6", loss="mse")
    with assert_unchanged(model):
        result = gf.analyze({"mlp": model}, hessian=True, **FAST, **options)
    frame = result.hessian
    probe = _probe("mlp", model, **options)
    x, y = probe.inputs[:4], probe.targets[:4]
    groups, _ = parameter_blocks(model, x)
    assert sum(map(len, groups.values())) == len(list(model.parameters()))
    expected = _expected(model, x, y, groups, loss_fn=resolve_loss(probe.loss_fn))
    pd.testing.assert_series_equal(_values(frame), _values(expected), rtol=1e-5)
    # the whole net's top eigenvalue against the dense Hessian, within its certified bound
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].reshape(-1) for n in names])

    def loss(vector):
        pieces = dict(zip(names, vector.split([s.numel() for s in shapes]), strict=True))
        tensors = {n: pieces[n].reshape(s) for n, s in zip(names, shapes, strict=True)}
        out = torch.func.functional_call(model, tensors, (x,))
        return resolve_loss(probe.loss_fn)(out, y)

    dense = torch.linalg.eigvalsh(torch.func.hessian(loss)(flat))
    top = frame[(frame.block == "all") & (frame.quantity == "eigenvalue")].iloc[0]
    assert top.value == pytest.approx(float(dense[-1]), abs=top.error + 1e-4 * top.value)
    assert top.error < 1e-2 * top.value


MLP_FILE = """
import torch
from torch import nn


def build(**options):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
"""


def test_cli_hessian_writes_frame_figures_and_phase(tmp_path):
    (tmp_path / "mlp.py").write_text(MLP_FILE)
    out = tmp_path / "report"
    command = [sys.executable, "-m", "gradflow", "analyze", "--model", "mlp.py:build",
               "--input-shape", "6", "--loss", "mse", "--hessian", "--hessian-batch", "4",
               "--batch-size", "8", "--samples", "1", "--k", "1", "--depths", "1", "--out",
               str(out), "--quiet"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(out / "data" / "hessian.csv")
    assert {"eigenvalue", "trace", "density"} <= set(frame.quantity)
    assert set(frame.block) == {"all", "0", "2", "4"}  # gf.structure: three Linear blocks
    for name in ("hessian_blocks", "hessian_density"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    meta = json.loads((out / "meta.json").read_text())
    hessian = [t for t in meta["phase_seconds"] if t["phase"] == "hessian"]
    assert len(hessian) == 1 and hessian[0]["seconds"] > 0
    assert meta["hessian"]["bn"] == "train" and meta["config"]["hessian"] is True
    html = (out / "report.html").read_text()
    assert "Curvature (loss Hessian)" in html and "train-mode BN" in html
