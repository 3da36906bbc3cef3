"""The routes of which="both" (one Golub-Kahan space for top and bottom, the walk's basis for
the cumulative products) against exact SVDs, and the dense route's cost check (issue 14:
``--k 100000`` must not silently form a 16384 x 16384 Jacobian)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from gradflow.errors import UserInputError
from gradflow.spectra import (
    JacobianOperator,
    block_spectra,
    check_spectra_cost,
    cumulative_singular_values,
    singular_values,
)
from gradflow.spectra.solvers import DenseCost

DTYPES = [(torch.float64, 1e-7), (torch.float32, 1e-4)]


def decaying_map(rows: int, cols: int, dtype: torch.dtype, seed: int = 0):
    """fn(x) = A x with singular values logspace(1, -1) and the exact values (float64)."""
    g = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))
    exact = torch.logspace(1, -1, cols, dtype=torch.float64)
    matrix = (left * exact) @ right.T
    cast = matrix.to(dtype)
    return (lambda x: cast @ x), exact.numpy()


@pytest.mark.parametrize(("dtype", "rtol"), DTYPES)
def test_both_from_one_krylov_space_top_exact_bottom_upper_bounds(dtype, rtol):
    fn, exact = decaying_map(150, 100, dtype)
    x = torch.zeros(100, dtype=dtype)
    result = singular_values(
        fn, x, k=4, which="both", method="lanczos", tol=1e-6 * (rtol / 1e-7), max_matvecs=60
    )
    assert list(result.indices) == [0, 1, 2, 3, 96, 97, 98, 99]
    np.testing.assert_allclose(result.values[:4], exact[:4], rtol=rtol)
    # every value lies within its certified bound of some singular value
    gaps = np.abs(result.values[:, None] - exact[None, :]).min(axis=1)
    assert np.all(gaps <= result.errors + 1e-6 * exact[0])
    # interlacing: the j-th smallest Ritz value is >= the j-th smallest singular value
    assert np.all(result.values[4:] >= exact[96:] * (1 - rtol))


@pytest.mark.parametrize(("dtype", "rtol"), DTYPES)
def test_both_with_budget_certifies_the_bottom_and_stop_at_top_is_cheaper(dtype, rtol):
    fn, exact = decaying_map(120, 80, dtype, seed=1)
    x = torch.zeros(80, dtype=dtype)
    full = singular_values(fn, x, k=4, which="both", method="lanczos", tol=1e-5)
    assert full.converged
    np.testing.assert_allclose(full.values, exact[full.indices], rtol=max(rtol, 1e-5) * 10)
    quick = singular_values(fn, x, k=4, which="both", method="lanczos", tol=1e-5, stop_at_top=True)
    assert quick.matvecs < full.matvecs
    np.testing.assert_allclose(quick.values[:4], exact[:4], rtol=max(rtol, 1e-5) * 10)


@pytest.mark.parametrize(("dtype", "rtol"), DTYPES)
def test_walk_bottom_values_exact_when_the_basis_spans_the_input(dtype, rtol):
    g = torch.Generator().manual_seed(2)
    mats = [torch.randn(12, 12, generator=g, dtype=dtype) / 12**0.5 for _ in range(3)]
    steps = [lambda z, m=m: m @ z for m in mats]
    walk = cumulative_singular_values(steps, torch.zeros(12, dtype=dtype), k=3, bottom=3, tol=1e-6)
    product = torch.eye(12, dtype=torch.float64)
    for depth, matrix in enumerate(mats, start=1):
        product = matrix.double() @ product
        exact = torch.linalg.svdvals(product).numpy()
        result = walk[depth]
        assert list(result.indices) == [0, 1, 2, 9, 10, 11]
        np.testing.assert_allclose(result.values, exact[result.indices], rtol=100 * rtol)


def test_walk_bottom_values_are_upper_bounds_with_honest_errors():
    g = torch.Generator().manual_seed(3)
    mats = [torch.randn(100, 100, generator=g, dtype=torch.float64) / 100**0.5 for _ in range(2)]
    steps = [lambda z, m=m: m @ z for m in mats]
    walk = cumulative_singular_values(steps, torch.zeros(100, dtype=torch.float64), k=4, bottom=4)
    exact = torch.linalg.svdvals(mats[1] @ mats[0]).numpy()
    result = walk[2]
    assert list(result.indices[4:]) == [96, 97, 98, 99]
    assert np.all(result.values[4:] >= exact[96:])  # Ritz values bound the bottom from above
    gaps = np.abs(result.values[:, None] - exact[None, :]).min(axis=1)
    assert np.all(gaps <= result.errors + 1e-10)
    assert not result.converged  # a 100-dim spectrum's bottom is not certified by 16 vectors


def test_block_spectra_both_walks_the_chain_and_reports_bottom_ranks():
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(520, 520), nn.Tanh()) for _ in range(3)]
    model = nn.Sequential(*layers).double().eval()
    blocks = [(f"{i}", layer) for i, layer in enumerate(layers)]
    frame = block_spectra(
        model, torch.randn(1, 520, dtype=torch.float64), k=3, depths=[1, 3], samples=1,
        blocks=blocks, operators=("prod",), hutchinson=0, bn="eval",
    )  # fmt: skip
    assert set(frame["method"]) == {"walk"}
    for _, rows in frame.groupby("depth"):
        assert sorted(rows["index"]) == [0, 1, 2, 517, 518, 519]


def test_dense_cost_is_estimated_and_a_k_covering_a_large_map_is_refused():
    cost = DenseCost.of((16384, 16384), torch.float32)
    assert cost.products == 16384 and cost.bytes == 2 * 16384 * 16384 * 4
    assert not cost.affordable and DenseCost.of((3072, 10), torch.float32).affordable
    x = torch.zeros(128, 128)  # a 16384 x 16384 Jacobian (of v -> 2 v)
    with pytest.raises(UserInputError, match=r"k=100000 .*16384 products.*pass k <= 512"):
        singular_values(lambda v: 2 * v, x, k=100000, which="both")
    with pytest.raises(UserInputError, match=r"method='dense'.*pass method='lanczos'"):
        singular_values(lambda v: 2 * v, x, k=8, method="dense")
    with pytest.raises(UserInputError, match="k=5000"):
        cumulative_singular_values([lambda v: 2 * v], torch.zeros(16384), k=5000)
    small = singular_values(lambda v: 2 * v, torch.zeros(20), k=100000, which="both")
    np.testing.assert_allclose(small.values, 2.0)  # a small map: every value, densely


def test_cli_k_100000_exits_2_with_what_to_pass(tmp_path):
    command = [
        sys.executable, "-m", "gradflow", "analyze", "--model", "plain20", "--batch-size", "4",
        "--samples", "1", "--k", "100000", "--quiet", "--out", str(tmp_path / "r"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "k <=" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one line
    assert not (tmp_path / "r").exists()  # refused before any phase wrote anything


def test_spectra_cost_is_checked_from_one_forward_before_any_product():
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(96, 96), nn.Tanh()) for _ in range(2)]
    model = nn.Sequential(*layers).eval()
    blocks = [(f"{i}", layer) for i, layer in enumerate(layers)]
    x = torch.randn(3, 96)
    check_spectra_cost(model, x, k=100000, depths=[1, 2], blocks=blocks)  # 96 x 96: dense, cheap
    big = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, 16, 3, padding=1))
    wide = torch.randn(2, 16, 32, 32)  # 16384 x 16384 block maps
    check_spectra_cost(big, wide, k=8, blocks=[("0", big[0]), ("2", big[2])])
    with pytest.raises(UserInputError, match=r"k=100000 .*pass k <= 512"):
        check_spectra_cost(big, wide, k=100000, blocks=[("0", big[0]), ("2", big[2])])


def test_one_vector_products_take_a_fixed_route_so_reruns_give_the_same_bits():
    # jvp and double vjp differ at rounding level through an eval BatchNorm; the route of one
    # J v was once chosen by timing the two, and the same command wrote different spectra
    g = torch.Generator().manual_seed(4)
    norm = nn.BatchNorm2d(4)
    with torch.no_grad():
        norm.running_var.uniform_(0.5, 2.0, generator=g)
        norm.running_mean.normal_(generator=g)
        norm.weight.normal_(generator=g)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm, nn.Tanh())
    net = net.eval().requires_grad_(False)
    x = torch.randn(1, 3, 6, 6, generator=g)
    operator = JacobianOperator(net, x)
    v = torch.randn(3, x.numel(), generator=g)
    batched = operator.matmat_rows(v)  # many vectors: the vmapped jvp
    singles = torch.cat([operator.matmat_rows(v[i : i + 1]) for i in (0, 1, 2, 0)])
    double_vjp = operator._double_vjp_route()  # the fixed rule: one vector by double vjp
    expected = torch.stack([double_vjp(v[i].reshape(x.shape)).reshape(-1) for i in (0, 1, 2, 0)])
    assert torch.equal(singles, expected)
    assert not torch.equal(singles[:3], batched)  # the two routes do differ here
    dense = operator.dense().double()
    np.testing.assert_allclose(singles[:3].double(), v.double() @ dense.T, rtol=1e-4, atol=1e-5)
    runs = [singular_values(net, x, k=3, which="both", method="lanczos") for _ in range(2)]
    assert np.array_equal(runs[0].values, runs[1].values)
    assert np.array_equal(runs[0].errors, runs[1].errors)


@pytest.mark.parametrize("rows", [7, 300, 100000])  # 7 < 2 x 40 columns: the guard's floor
def test_tall_triangle_is_the_householder_r_up_to_row_signs(rows):
    from gradflow.spectra.solvers import tall_triangle

    g = torch.Generator().manual_seed(0)
    # graded columns (condition number ~1e5) and more rows than one block: several levels
    tall = torch.randn(5000, 40, generator=g, dtype=torch.float64) * torch.logspace(0, -5, 40)
    exact = torch.linalg.qr(tall, mode="r")[1]
    found = tall_triangle(tall.float(), rows=rows)
    reference = torch.linalg.qr(tall.float().double(), mode="r")[1]  # the same float32 input
    assert found.shape == (40, 40) and found.dtype == torch.float64
    torch.testing.assert_close(found.abs(), reference.abs(), rtol=1e-10, atol=1e-12)
    values = torch.linalg.svdvals(found)
    torch.testing.assert_close(values, torch.linalg.svdvals(reference), rtol=1e-10, atol=0)
    assert torch.allclose(values, torch.linalg.svdvals(exact), rtol=1e-4)  # float32 input
