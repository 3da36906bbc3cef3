"""Hessian spectra against exact answers: quadratic, least squares, dense MLP Hessians."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.spectra.symmetric import SymmetricOperator, eigenvalues, trace
from gradflow.testing import assert_unchanged

REPO = Path(__file__).resolve().parents[1]


class Quadratic(nn.Module):
    """L(theta) = 0.5 theta^T A theta + b^T theta, so the Hessian is A."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix)
        self.theta = nn.Parameter(torch.randn(matrix.shape[0], dtype=matrix.dtype))
        self.bias = torch.randn(matrix.shape[0], dtype=matrix.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta
        return 0.5 * theta @ self.matrix @ theta + self.bias @ theta + 0 * x.sum()


def _known_spectrum(n: int, values: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    return q @ torch.diag(values) @ q.T


def rows(frame: pd.DataFrame, quantity: str, block: str = "all") -> pd.DataFrame:
    return frame[(frame.quantity == quantity) & (frame.block == block)].sort_values("index")


def test_quadratic_top_k_and_trace_exact():
    values = torch.cat([torch.tensor([9.0, 7.0, 4.0]), torch.linspace(-1, 1, 17)]).double()
    model = Quadratic(_known_spectrum(20, values))
    frame = gf.hessian_spectra(
        model, torch.zeros(1, 1), loss_fn=lambda out: out, k=3, blocks=None, tol=1e-10
    )
    top = rows(frame, "eigenvalue")
    np.testing.assert_allclose(top.value, [9.0, 7.0, 4.0], rtol=1e-9)
    assert top.converged.all() and (top.error < 1e-8).all()
    # 40 density steps span all 20 dimensions, so the deflated trace is exact
    trace_row = rows(frame, "trace").iloc[0]
    assert trace_row.value == pytest.approx(float(values.sum()), abs=1e-9)
    density = rows(frame, "density")
    integral = np.trapezoid(density.value, density.grid)
    assert integral == pytest.approx(1.0, abs=1e-3)


def test_hutchinson_deflation_on_a_large_operator():
    torch.manual_seed(1)
    values = torch.cat([torch.tensor([50.0, 40.0, 30.0]), 0.1 * torch.rand(397)]).double()
    operator = SymmetricOperator.dense(_known_spectrum(400, values))
    plain = trace(operator, 64)
    result = eigenvalues(operator, 3, tol=1e-6)
    deflated = trace(operator, 64, basis=result.basis, projected_trace=result.projected_trace)
    exact = float(values.sum())
    assert abs(plain.value - exact) < 4 * plain.std_error
    assert abs(deflated.value - exact) < 4 * deflated.std_error
    assert deflated.std_error < plain.std_error / 10  # the outliers carried the variance
    np.testing.assert_allclose(result.values, [50.0, 40.0, 30.0], rtol=1e-8)


def test_smallest_eigenvalues_and_ranks():
    values = torch.linspace(-3, 5, 60).double()
    operator = SymmetricOperator.dense(_known_spectrum(60, values))
    result = eigenvalues(operator, 2, "both", tol=1e-9, max_matvecs=60)
    np.testing.assert_allclose(result.values, [5.0, values[-2], values[1], -3.0], rtol=1e-8)
    assert list(result.indices) == [0, 1, 58, 59]


def _least_squares(dtype):
    torch.manual_seed(2)
    x = torch.randn(30, 6, dtype=dtype) * torch.tensor([3.0, 2, 1, 1, 0.5, 0.1], dtype=dtype)
    y = torch.randn(30, 1, dtype=dtype)
    model = nn.Linear(6, 1, bias=False).to(dtype)
    return model, x, y, (x.T @ x / 30).double()


def _half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return 0.5 * (outputs - targets).pow(2).sum(dim=1).mean()


@pytest.mark.parametrize("cache", [True, False])
def test_least_squares_over_batches_is_xtx_over_n(cache):
    model, x, y, exact = _least_squares(torch.float64)
    batches = [(x[:7], y[:7]), (x[7:20], y[7:20]), (x[20:], y[20:])]  # unequal sizes
    frame = gf.hessian_spectra(
        model, batches, loss_fn=_half_mse, k=3, blocks=None, tol=1e-10, cache=cache
    )
    expected = torch.linalg.eigvalsh(exact).flip(0)[:3].numpy()
    np.testing.assert_allclose(rows(frame, "eigenvalue").value, expected, rtol=1e-9)
    assert rows(frame, "trace").value.iloc[0] == pytest.approx(float(exact.trace()), rel=1e-9)


def _mlp_and_dense_hessian(dtype):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    x, y = torch.randn(16, 4, dtype=dtype), torch.randint(0, 3, (16,))
    params = {name: p.detach().double() for name, p in model.named_parameters()}
    reference = model.double() if dtype == torch.float64 else _double_copy(model)

    def loss(flat):
        pieces, offset = {}, 0
        for name, p in params.items():
            pieces[name] = flat[offset : offset + p.numel()].reshape(p.shape)
            offset += p.numel()
        return F.cross_entropy(functional_call(reference, pieces, (x.double(),)), y)

    flat = torch.cat([p.reshape(-1) for p in params.values()])
    return model, x, y, hessian(loss)(flat)


def _double_copy(model):
    import copy

    return copy.deepcopy(model).double()


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_mlp_matches_dense_hessian_whole_and_per_block(dtype, rtol):
    model, x, y, dense = _mlp_and_dense_hessian(dtype)
    blocks = [("first", model[0]), ("last", model[2])]
    frame = gf.hessian_spectra(
        model, x, y, k=2, blocks=blocks, tol=1e-9 if dtype == torch.float64 else 1e-5
    )
    first = 4 * 6 + 6
    parts = {"all": dense, "first": dense[:first, :first], "last": dense[first:, first:]}
    for block, matrix in parts.items():
        exact = torch.linalg.eigvalsh(matrix).flip(0)[:2].numpy()
        found = rows(frame, "eigenvalue", block)
        np.testing.assert_allclose(found.value, exact, rtol=rtol, atol=rtol * exact[0])
        assert (np.abs(found.value.to_numpy() - exact) <= found.error.to_numpy() + 1e-6).all()
        measured = rows(frame, "trace", block).iloc[0]
        # 40 Lanczos vectors deflate 40 of the 51 dimensions: Hutchinson on the rest
        tolerance = 4 * measured.error + 10 * rtol * abs(float(matrix.trace()))
        assert abs(measured.value - float(matrix.trace())) <= tolerance
        assert measured.params == matrix.shape[0]
    assert (frame.dtypes["value"] == np.float64) and frame.kind.isin(["all", "other"]).all()


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def test_batchnorm_modes_and_the_model_is_never_changed():
    torch.manual_seed(4)
    model = BatchNormNet().double()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 2, (12,))
    model.train()
    model(x)  # running statistics differ from the batch's
    model.eval()
    model(x).sum().backward()  # a .grad the analysis must leave as it is
    model.register_forward_hook(lambda *args: None)
    with assert_unchanged(model):
        train = gf.hessian_spectra(model, x, y, k=1, blocks=None, bn="train", tol=1e-9)
        evaluated = gf.hessian_spectra(model, x, y, k=1, blocks=None, bn="eval", tol=1e-9)
    for mode, frame in (("train", train), ("eval", evaluated)):
        reference = BatchNormNet().double()
        reference.load_state_dict(model.state_dict())
        reference.train(mode == "train")
        if mode == "train":  # batch statistics only, no in-place running-stat update
            reference.bn.track_running_stats = False
            reference.bn.running_mean = reference.bn.running_var = None
        params = {n: p.detach() for n, p in reference.named_parameters()}
        sizes = [p.numel() for p in params.values()]

        def loss(flat, reference=reference, params=params, sizes=sizes):
            pieces = {
                name: piece.reshape(params[name].shape)
                for name, piece in zip(params, flat.split(sizes), strict=True)
            }
            return F.cross_entropy(functional_call(reference, pieces, (x,)), y)

        flat = torch.cat([p.reshape(-1) for p in params.values()])
        # torch.func's hessian/jacrev of train-mode BN is not symmetric here (0.08 off,
        # torch 2.13): the dense reference is autograd's double backward instead
        dense = torch.autograd.functional.hessian(loss, flat)
        assert torch.allclose(dense, dense.T, atol=1e-12)
        exact = float(torch.linalg.eigvalsh(dense)[-1])
        assert rows(frame, "eigenvalue").value.iloc[0] == pytest.approx(exact, rel=1e-8)
        assert (frame.bn == mode).all()
    assert rows(train, "eigenvalue").value.iloc[0] != pytest.approx(
        rows(evaluated, "eigenvalue").value.iloc[0], rel=1e-3
    )


def test_zoo_blocks_partition_the_trace():
    model = gf.create_model("resnet20", in_channels=1, num_classes=3)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    frame = gf.hessian_spectra(
        model, x, y, k=1, quantities=("trace",), trace_probes=4, max_matvecs=1
    )
    blocks = frame[frame.block != "all"]
    assert list(blocks.block)[:2] == ["stem", "stage1.block1"] and blocks.block.iloc[-1] == "head"
    assert list(blocks.depth) == list(range(1, 12)) and set(blocks.kind) == {"residual", "other"}
    assert blocks.params.sum() == gf.count_parameters(model)
    # tr(H) is the sum of the traces of the diagonal blocks: the estimates agree within error
    whole = frame[frame.block == "all"].iloc[0]
    spread = np.sqrt(whole.error**2 + (blocks.error**2).sum())
    assert abs(whole.value - blocks.value.sum()) < 4 * spread


def test_parameter_globs_and_user_errors():
    model, x, y, dense = _mlp_and_dense_hessian(torch.float64)
    frame = gf.hessian_spectra(
        model, x, y, blocks=["2.*"], quantities=(), block_quantities=("eigenvalue",), tol=1e-9
    )
    assert set(frame.block) == {"2.*"}
    exact = float(torch.linalg.eigvalsh(dense[30:, 30:])[-1])
    assert frame.value.iloc[0] == pytest.approx(exact, rel=1e-8)
    with pytest.raises(UserInputError, match="bn"):
        gf.hessian_spectra(model, x, y, bn="calibrate")
    with pytest.raises(UserInputError, match="matches no"):
        gf.hessian_spectra(model, x, y, blocks=["nothing.*"])
    with pytest.raises(UserInputError, match="loss_fn"):
        gf.hessian_spectra(model, x)
    with pytest.raises(UserInputError, match="pairs"):
        gf.hessian_spectra(model, [x, y])


def test_nonfinite_loss_is_reported():
    model, x, y, _ = _mlp_and_dense_hessian(torch.float64)
    x = x.clone()
    x[0, 0] = float("nan")
    with pytest.raises(UserInputError, match="nan"):
        gf.hessian_spectra(model, x, y, blocks=None)


def test_figures_only_read_the_frame():
    from gradflow.report_hessian import hessian_density_figure, hessian_figure

    model, x, y, _ = _mlp_and_dense_hessian(torch.float64)
    frame = gf.hessian_spectra(model, x, y, blocks=[("first", model[0]), ("last", model[2])])
    assert hessian_figure(frame) is not None
    assert hessian_density_figure(frame) is not None


def test_experiment_smoke(tmp_path):
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "hessian_spectra.py"), "--scale", "smoke",
         "--out", str(out), "--cache", str(tmp_path / "runs"), "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = pd.read_csv(out / "data" / "summary.csv")
    assert {"plain20", "resnet20"} <= set(summary.model)
    assert np.isfinite(summary.top_eigenvalue).all() and (summary.top_eigenvalue > 0).all()
    assert (out / "README.md").read_text().count("![") >= 2
