"""Jacobian spectra against exact answers: orthogonal nets, Gaussian products, zero-gamma blocks."""

import numpy as np
import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.models.blocks import BasicBlock
from gradflow.spectra import (
    block_spectra,
    frobenius_norm,
    singular_values,
    spectral_density,
    summarize_spectra,
)
from gradflow.spectra.blocks import _resolve_depths
from gradflow.state import ModelState


def orthogonal_net(depth: int, width: int, dtype: torch.dtype) -> list[nn.Linear]:
    layers = []
    for _ in range(depth):
        layer = nn.Linear(width, width, bias=False).to(dtype)
        nn.init.orthogonal_(layer.weight)
        layers.append(layer)
    return layers


def chain(layers):
    def forward(x):
        for layer in layers:
            x = layer(x)
        return x

    return forward


def gaussian_product(shapes, dtype=torch.float64):
    """fn(x) = W_L ... W_1 x and the same product as a numpy matrix."""
    matrices = [torch.randn(rows, cols, dtype=dtype) / cols**0.5 for rows, cols in shapes]
    product = matrices[0].double().numpy()
    for matrix in matrices[1:]:
        product = matrix.double().numpy() @ product
    return chain([lambda x, m=m: m @ x for m in matrices]), product


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_orthogonal_deep_linear_network_has_unit_singular_values(dtype, tolerance):
    # A product of 40 orthogonal 48x48 matrices is orthogonal: every singular value is 1.
    # float32: 40 roundings of ~6e-8 each, so 1e-4 leaves a wide margin.
    layers = orthogonal_net(40, 48, dtype)
    x = torch.randn(48, dtype=dtype)
    dense = singular_values(chain(layers), x, k=None, method="dense")
    assert len(dense.values) == 48
    np.testing.assert_allclose(dense.values, 1.0, atol=tolerance)
    iterative = singular_values(chain(layers), x, k=8, which="both", method="lanczos", tol=1e-8)
    np.testing.assert_allclose(iterative.values, 1.0, atol=tolerance)
    assert iterative.converged and iterative.matvecs > 0


def test_orthogonal_net_cumulative_products_through_user_blocks():
    layers = orthogonal_net(40, 48, torch.float64)
    blocks = [(f"layer{i}", layer) for i, layer in enumerate(layers, start=1)]
    frame = block_spectra(
        nn.Sequential(*layers), torch.randn(1, 48, dtype=torch.float64), k=4, depths=[1, 20, 40],
        samples=1, blocks=blocks, operators=("prod",), method="dense", hutchinson=0, bn="eval",
    )  # fmt: skip
    assert sorted(frame["depth"].unique()) == [1, 20, 40]
    np.testing.assert_allclose(frame["sigma"], 1.0, atol=1e-6)


@pytest.mark.parametrize("shapes", [[(120, 100), (150, 120), (200, 150)], [(80, 300), (60, 80)]])
def test_gaussian_product_matches_numpy_svd(shapes):
    fn, product = gaussian_product(shapes)
    exact = np.linalg.svd(product, compute_uv=False)
    x = torch.randn(shapes[0][1], dtype=torch.float64)
    dense = singular_values(fn, x, k=None, method="dense")
    np.testing.assert_allclose(dense.values, exact, rtol=1e-8)
    for which in ("largest", "smallest"):
        result = singular_values(fn, x, k=8, which=which, method="lanczos", tol=1e-7)
        np.testing.assert_allclose(result.values, exact[result.indices], rtol=1e-5)
        # The reported bound must cover the actual error (it is a guarantee, not a guess).
        assert np.all(np.abs(result.values - exact[result.indices]) <= result.errors + 1e-12)
    top = singular_values(fn, x, k=8, method="randomized", tol=1e-7)
    np.testing.assert_allclose(top.values, exact[:8], rtol=1e-5)


def test_float32_agrees_with_float64_per_method():
    # float32 products carry ~1e-7 relative rounding: dense and top values agree to 1e-5,
    # bottom values (relative to themselves, condition ~10 here) to 1e-4.
    fn64, _ = gaussian_product([(120, 100), (150, 120)])
    x64 = torch.randn(100, dtype=torch.float64)
    matrices = [torch.randn(1)]  # keep the seed stream independent of the dtype below
    del matrices
    fn32 = lambda x: fn64(x.double()).float()  # noqa: E731
    for method, which, rtol in (("dense", "both", 1e-5), ("lanczos", "largest", 1e-5),
                                ("lanczos", "smallest", 1e-4)):  # fmt: skip
        reference = singular_values(fn64, x64, k=8, which=which, method=method, tol=1e-7)
        single = singular_values(fn32, x64.float(), k=8, which=which, method=method, tol=1e-5)
        np.testing.assert_allclose(single.values, reference.values, rtol=rtol)


def zero_gamma_block(channels: int = 4) -> BasicBlock:
    block = BasicBlock(channels, channels, stride=1, residual=True)
    nn.init.zeros_(block.bn2.weight)  # zero gamma: F(x) = beta = 0
    return block.eval().double()


def test_zero_gamma_block_is_identity_at_positive_input():
    # relu(F(x) + x) = relu(x) = x with dH/dx = I wherever x > 0, and J_F = 0.
    block = zero_gamma_block()
    x = torch.rand(1, 4, 6, 6, dtype=torch.float64) + 0.1
    whole = singular_values(block, x, k=None, method="dense")
    branch = singular_values(block.branch, x, k=None, method="dense")
    np.testing.assert_allclose(whole.values, 1.0, atol=1e-12)
    np.testing.assert_allclose(branch.values, 0.0, atol=1e-12)
    frame = block_spectra(
        block, x, k=4, samples=1, blocks=[("block", block)], bn="eval", method="dense",
        hutchinson=0, operators=("block",),
    )  # fmt: skip
    assert set(frame["operator"]) == {"I+J_F", "J_F"}
    np.testing.assert_allclose(frame.loc[frame.operator == "I+J_F", "sigma"], 1.0, atol=1e-12)
    np.testing.assert_allclose(frame.loc[frame.operator == "J_F", "sigma"], 0.0, atol=1e-12)


def small_conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 6, 3, padding=1), nn.Tanh()
    ).double()


def test_small_conv_net_iterative_top_and_bottom_match_dense():
    net = small_conv_net()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    dense = singular_values(net, x, k=None, method="dense").values  # 216 x 108: 108 values
    result = singular_values(net, x, k=8, which="both", method="lanczos", tol=1e-8)
    assert list(result.indices) == list(range(8)) + list(range(100, 108))
    np.testing.assert_allclose(result.values, dense[result.indices], rtol=1e-5)
    assert np.all(np.abs(result.values - dense[result.indices]) <= result.errors + 1e-12)


def test_hutchinson_and_slq_estimate_the_frobenius_norm():
    fn, product = gaussian_product([(120, 100), (150, 120)])
    exact_squared = float((product**2).sum())
    x = torch.randn(100, dtype=torch.float64)
    estimate = frobenius_norm(fn, x, probes=64)
    # Unbiased estimator; 5 standard errors make a false failure practically impossible.
    assert abs(estimate.squared - exact_squared) <= 5 * estimate.squared_std_error
    density = spectral_density(fn, x, steps=100, probes=2)  # 100 steps = whole space: exact nodes
    assert density["weight"].sum() == pytest.approx(1.0)
    exact = np.linalg.svd(product, compute_uv=False)
    assert density["node"].max() == pytest.approx(exact[0], rel=1e-8)


def test_block_spectra_on_zoo_models_has_the_schema_and_operators():
    x = torch.randn(2, 3, 8, 8)
    for name, operators in (("plain20", {"J_H", "prod"}), ("resnet20", {"I+J_F", "J_F", "prod"})):
        model = gf.create_model(name)
        assert _resolve_depths("auto", model.named_blocks()) == [1, 3, 6, 9]  # stage ends
        frame = block_spectra(
            model, x, k=2, depths=[1, 9], samples=2, max_matvecs=16, hutchinson=2, model_name=name
        )
        assert list(frame.columns[:9]) == [
            "model", "depth", "block", "stage", "operator", "sample", "index", "sigma", "error"
        ]  # fmt: skip
        assert set(frame["operator"]) == operators
        assert set(frame["block"]) == {"stage1.block1", "stage3.block3"}
        assert set(frame["sample"]) == {0, 1}
        summary = summarize_spectra(frame)
        assert {"largest", "smallest", "log10_condition", "mean_sq_estimate"} <= set(summary)
        assert (summary["largest"] >= summary["smallest"]).all()


@pytest.mark.parametrize("bn", ["calibrate", "eval", "train"])
def test_block_spectra_never_touches_the_model(bn):
    model = gf.create_model("resnet20").train()
    x = torch.randn(2, 3, 8, 8)
    before = ModelState.capture(model)  # parameters, buffers, flags, grads, hooks, RNG
    block_spectra(model, x, k=2, depths=[1, 2], max_matvecs=32, bn=bn)
    assert before.differences(ModelState.capture(model)) == []
    with pytest.raises(UserInputError):  # also when it fails half-way
        block_spectra(model, x, k=2, depths=[1], max_matvecs=32, bn=bn, which="middle")
    assert before.differences(ModelState.capture(model)) == []


def test_user_errors_are_clear():
    x = torch.randn(5, dtype=torch.float64)
    with pytest.raises(UserInputError, match="which"):
        singular_values(lambda v: v, x, which="middle")
    with pytest.raises(UserInputError, match="smallest"):
        singular_values(lambda v: v, x, which="smallest", method="randomized")
    with pytest.raises(UserInputError, match="NaN"):
        singular_values(lambda v: v, torch.full((5,), float("nan")))
    with pytest.raises(UserInputError, match="blocks="):
        block_spectra(nn.Linear(5, 5), torch.randn(1, 5))
    with pytest.raises(UserInputError, match="depths"):
        block_spectra(gf.create_model("resnet20"), torch.randn(1, 3, 8, 8), depths=[0, 99])
