"""JacobianOperator: the scipy-like vocabulary, the double-vjp fallback, train-mode BN."""

import warnings

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import svds
from torch import nn

from gradflow.errors import UserInputError
from gradflow.spectra import JacobianOperator, singular_values
from gradflow.spectra.bidiagonal import largest_triplets
from gradflow.spectra.operators import TallView, probe_generator
from gradflow.state import ModelState


def matrix_operator(rows: int, cols: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    point = torch.randn(cols, generator=generator, dtype=torch.float64)
    return JacobianOperator(lambda v: torch.tanh(matrix @ v), point), matrix, point


def test_vocabulary_matches_the_dense_jacobian():
    operator, matrix, point = matrix_operator(7, 5)
    jacobian = torch.diag(1 - torch.tanh(matrix @ point) ** 2) @ matrix
    assert operator.shape == (7, 5) and operator.dtype == torch.float64
    assert operator.T.shape == (5, 7) and operator.T.T is operator
    columns, left = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(operator.matmat(columns), jacobian @ columns)
    torch.testing.assert_close(operator.rmatmat(left), jacobian.T @ left)
    torch.testing.assert_close(operator.matvec(columns[:, 0]), jacobian @ columns[:, 0])
    torch.testing.assert_close(operator.rmatvec(left[:, 0]), jacobian.T @ left[:, 0])
    torch.testing.assert_close(operator.matmat_rows(columns.T), (jacobian @ columns).T)
    torch.testing.assert_close(operator.T.matmat(left), jacobian.T @ left)
    torch.testing.assert_close(operator.dense(), jacobian)
    assert operator.route == "forward" and operator.products > 0
    assert operator.tall() is operator and operator.T.tall() is operator
    view = TallView(operator.T)  # the backwards-compatible name of .tall()
    assert (view.rows, view.cols, view.transposed) == (7, 5, True)
    linear = operator.as_linear_operator()
    np.testing.assert_allclose(linear @ columns.numpy(), (jacobian @ columns).numpy())
    np.testing.assert_allclose(linear.T @ left.numpy(), (jacobian.T @ left).numpy())
    exact = np.linalg.svd(jacobian.numpy(), compute_uv=False)
    values = svds(linear, k=2, return_singular_vectors=False, rng=np.random.default_rng(0))
    np.testing.assert_allclose(np.sort(values)[::-1], exact[:2], rtol=1e-10)


@pytest.mark.parametrize("basis_size", [None, 12])
def test_bidiagonalisation_bounds_cover_the_error(basis_size):
    # basis_size 12 for k=4 forces several thick restarts.
    operator, _, _ = matrix_operator(90, 60, seed=1)
    exact = np.linalg.svd(operator.dense().numpy(), compute_uv=False)
    found = largest_triplets(operator, 4, 1e-9, 2000, probe_generator(0), basis_size=basis_size)
    assert found.converged
    error = np.abs(found.values.numpy() - exact[:4])
    np.testing.assert_allclose(found.values.numpy(), exact[:4], rtol=1e-8)
    assert np.all(error <= found.errors.numpy() + 1e-13)


class AttentionAndLstm(nn.Module):
    """A TransformerEncoderLayer (fused attention / fast path: no forward AD) then an LSTM
    (mkldnn in float32: no forward AD, no batching rule for its backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.lstm = nn.LSTM(8, 6, batch_first=True)

    def forward(self, x):
        return self.lstm(self.encoder(x))[0]


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_double_vjp_fallback_matches_the_dense_jacobian(dtype, rtol):
    torch.manual_seed(0)
    model = AttentionAndLstm().to(dtype).eval()
    x = torch.randn(1, 5, 8, dtype=dtype)
    dense = torch.autograd.functional.jacobian(model, x).reshape(30, 40).double()
    exact = np.linalg.svd(dense.numpy(), compute_uv=False)
    before = ModelState.capture(model)
    operator = JacobianOperator(model, x)
    with pytest.warns(UserWarning, match="double vjp") as caught:
        columns = operator.matmat(torch.eye(40, dtype=dtype))
        operator.matmat(torch.eye(40, dtype=dtype)[:, :1])  # no second warning
    assert operator.route == "double_vjp"
    assert sum("double vjp" in str(w.message) for w in caught) == 1
    torch.testing.assert_close(columns.double(), dense, rtol=rtol, atol=rtol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        top = singular_values(model, x, k=4, method="lanczos", tol=1e-6)
    np.testing.assert_allclose(top.values, exact[:4], rtol=max(rtol, 1e-6))
    assert before.differences(ModelState.capture(model)) == []


def test_train_mode_batchnorm_is_a_user_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    x = torch.randn(2, 3, 6, 6)
    before = ModelState.capture(model)
    with pytest.raises(UserInputError, match="calibrated_copy"):
        singular_values(model, x, k=2, method="lanczos")
    with pytest.raises(UserInputError, match="eval mode"):  # a closure: caught under vmap
        singular_values(lambda z: model(z), x, k=2, method="dense")
    assert before.differences(ModelState.capture(model)) == []
    frame = singular_values(model.eval(), x, k=2, method="lanczos")
    assert frame.converged


def test_bidiagonalisation_in_float32_stores_products_as_computed_and_bounds_hold(monkeypatch):
    # a float32 operator's raw products are kept in float32 (exact: they were computed so),
    # the basis that the budget cannot fill is never allocated, and the restarts and the
    # certificate run by column chunks: the bounds still cover the true error
    from gradflow.spectra import bidiagonal

    generator = torch.Generator().manual_seed(3)
    matrix = torch.randn(300, 200, generator=generator)
    operator = JacobianOperator(lambda v: torch.tanh(matrix @ v), torch.randn(200) / 20)
    exact = np.linalg.svd(operator.dense().double().numpy(), compute_uv=False)
    sides = []
    original = bidiagonal._Side.__init__

    def spy(self, capacity, size, image_size, image_dtype):
        sides.append((capacity, image_dtype))
        original(self, capacity, size, image_size, image_dtype)

    monkeypatch.setattr(bidiagonal._Side, "__init__", spy)
    monkeypatch.setattr(bidiagonal, "COLUMN_CHUNK", 7)  # chunks that do not divide 300 or 200
    found = largest_triplets(operator, 3, 1e-4, 400, probe_generator(0), basis_size=10)
    assert found.converged and sides == [(11, torch.float32), (10, torch.float32)]
    error = np.abs(found.values.numpy() - exact[:3])
    np.testing.assert_allclose(found.values.numpy(), exact[:3], rtol=1e-5)
    assert np.all(error <= found.errors.numpy() + 1e-6 * exact[0])
    sides.clear()
    largest_triplets(operator, 3, 1e-4, 20, probe_generator(0))  # 20 products: 10 steps
    assert [capacity for capacity, _ in sides] == [11, 10]  # not max(4 k, k + 48) = 51


def test_the_walk_basis_shrinks_to_its_images_budget_and_stays_exact(monkeypatch):
    from gradflow.spectra import cumulative

    generator = torch.Generator().manual_seed(4)
    mats = [torch.randn(60, 60, generator=generator, dtype=torch.float64) / 8 for _ in range(3)]
    steps = [lambda z, a=a: torch.tanh(a @ z) for a in mats]
    x = torch.randn(60, generator=generator, dtype=torch.float64)
    roomy = cumulative.cumulative_singular_values(steps, x, k=3, tol=1e-8)
    # 2 rows of images fit: the basis falls to its floor of 2 blocks (32 vectors, not 64)
    monkeypatch.setattr(cumulative, "IMAGES_BYTES", 2 * 60 * 8)
    tight = cumulative.cumulative_singular_values(steps, x, k=3, tol=1e-8)
    for depth in (1, 2, 3):
        point, jacobian = x, torch.eye(60, dtype=torch.float64)
        for step in steps[:depth]:
            jacobian = torch.autograd.functional.jacobian(step, point) @ jacobian
            point = step(point)
        exact = torch.linalg.svdvals(jacobian)[:3].numpy()
        assert tight[depth].converged and roomy[depth].converged
        np.testing.assert_allclose(tight[depth].values, exact, rtol=1e-7)
        np.testing.assert_allclose(roomy[depth].values, exact, rtol=1e-7)
