"""The depth walk (top singular values of every cumulative product) against exact answers."""

import numpy as np
import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.spectra import block_spectra, cumulative_singular_values


def tanh_chain(depth: int, width: int, dtype: torch.dtype, seed: int = 0):
    """Steps z -> tanh(A_l z) with A_l = I + G/sqrt(width) (residual-like), and dense J_1:d."""
    generator = torch.Generator().manual_seed(seed)
    matrices = [
        torch.eye(width, dtype=dtype)
        + torch.randn(width, width, generator=generator, dtype=dtype) / width**0.5
        for _ in range(depth)
    ]
    steps = [lambda z, a=a: torch.tanh(a @ z) for a in matrices]
    x = 0.3 * torch.randn(width, generator=generator, dtype=dtype)
    products, z, product = [], x.double(), torch.eye(width, dtype=torch.float64)
    for a in matrices:
        pre = a.double() @ z
        product = torch.diag(1 - torch.tanh(pre) ** 2) @ a.double() @ product
        products.append(torch.linalg.svdvals(product).numpy())
        z = torch.tanh(pre)
    return steps, x, products


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-7), (torch.float32, 1e-4)])
def test_walk_matches_the_svd_of_every_product(dtype, tolerance):
    # Exact J_d...J_1 by hand in float64. float64: each value is certified to 1e-7 * sigma
    # and the true error must lie inside its bound; float32: ~20 steps of rounding ~6e-8 on
    # sigma ~ 2, so 1e-4 leaves a wide margin.
    steps, x, exact = tanh_chain(depth=20, width=120, dtype=dtype)
    tol = 1e-7 if dtype == torch.float64 else 1e-4
    results = cumulative_singular_values(steps, x, k=6, tol=tol, max_rounds=30, max_basis=96)
    assert sorted(results) == list(range(1, 21))
    for depth, result in results.items():
        top = exact[depth - 1][:6]
        np.testing.assert_allclose(result.values, top, rtol=tolerance)
        assert result.method == "walk" and result.dim == 120 and list(result.indices) == [*range(6)]
        if dtype == torch.float64:
            assert result.converged
            assert np.all(np.abs(result.values - top) <= result.errors + 1e-12)


def test_orthogonal_chain_has_unit_values_at_every_depth():
    layers = [nn.Linear(48, 48, bias=False).double() for _ in range(40)]
    for layer in layers:
        nn.init.orthogonal_(layer.weight)
    results = cumulative_singular_values(layers, torch.randn(48, dtype=torch.float64), k=4)
    for result in results.values():
        np.testing.assert_allclose(result.values, 1.0, atol=1e-12)
        assert result.converged


def test_forward_cost_is_linear_in_depth():
    # Solving each of 30 depths alone would cost sum(d)/30 = 15.5x the deepest one; the walk
    # pays a few certificate blocks per depth (5.5x here) and a warm deep depth costs less
    # than a cold one.
    steps, x, _ = tanh_chain(depth=30, width=200, dtype=torch.float64, seed=1)
    one = cumulative_singular_values(steps, x, k=4, depths=[30], tol=1e-4)[30]
    every = cumulative_singular_values(steps, x, k=4, tol=1e-4)
    one_products = one.matvecs * 30
    every_products = sum(result.matvecs * depth for depth, result in every.items())
    assert every[30].converged and one.converged
    np.testing.assert_allclose(every[30].values, one.values, rtol=2e-4)
    assert every_products <= 6 * one_products, (every_products, one_products)
    assert every[30].matvecs < one.matvecs / 2


def test_hutchinson_along_the_walk_estimates_mean_square():
    steps, x, exact = tanh_chain(depth=10, width=100, dtype=torch.float64)
    results = cumulative_singular_values(steps, x, k=2, hutchinson=400, seed=3)
    for depth, result in results.items():
        mean_sq = float(np.mean(exact[depth - 1] ** 2))
        # 400 Gaussian probes: relative std of the estimate ~ sqrt(2 * sum s^4) / (400^.5 * ||J||^2)
        assert abs(result.mean_sq_estimate / mean_sq - 1) < 0.2


def test_block_spectra_uses_the_walk_for_largest_prod():
    torch.manual_seed(0)
    model = gf.create_model("resnet8", num_classes=10)
    x = torch.randn(2, 3, 16, 16)
    walk = block_spectra(model, x, k=3, depths="all", samples=1, which="largest",
                         operators=("prod",), hutchinson=0)  # fmt: skip
    dense = block_spectra(model, x, k=3, depths="all", samples=1, which="largest",
                          operators=("prod",), method="dense", hutchinson=0)  # fmt: skip
    assert set(walk["method"]) == {"walk"} and set(dense["method"]) == {"dense"}
    assert walk["converged"].all()
    np.testing.assert_allclose(walk["sigma"], dense["sigma"], rtol=1e-2)


def test_walk_user_errors():
    steps, x, _ = tanh_chain(depth=3, width=10, dtype=torch.float64)
    with pytest.raises(UserInputError, match=r"depths must lie in 1\.\.3"):
        cumulative_singular_values(steps, x, depths=[4])
    with pytest.raises(UserInputError, match="k must be"):
        cumulative_singular_values(steps, x, k=0)
    with pytest.raises(UserInputError, match="non-finite"):
        cumulative_singular_values([lambda z: z / 0.0], x)
    model = gf.create_model("resnet8", num_classes=10)
    with pytest.raises(UserInputError, match="which='largest'"):
        block_spectra(model, torch.randn(2, 3, 8, 8), which="both", method="walk")
