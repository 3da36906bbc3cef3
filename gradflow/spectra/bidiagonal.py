"""Largest singular triplets by Golub-Kahan-Lanczos bidiagonalisation with thick restarts.

One step pushes the newest right vector v through A (one jvp) and pulls the newest left
vector u back through A^T (one vjp), orthogonalising each against all earlier vectors of its
side (two passes of classical Gram-Schmidt, in float64). The coefficients fill the small
matrix B = U A V^T, whose SVD B = P S Q^T gives the Ritz triplets (s, u = P^T U, v = Q^T V),
with A v = s u exactly and A^T u - s v = (b . p) v_next, b the coefficients of the newest v:
the convergence test costs no product (PROPACK's recurrence, with full reorthogonalisation).
When the basis is full, it restarts from its best Ritz vectors plus v_next (Baglama & Reichel
2005), which keeps the relation above.

Certification does not trust the recurrence: the raw products A v_l and A^T u_l are kept (in
the operator's dtype, in which they were computed: a float32 product loses nothing there, and
the basis of a 200704 -> 802816 block map is then 0.8 GB instead of 1.1 GB), so
the Ritz vectors' images are explicit linear combinations of computed products, and
r = sqrt(||A v - s u||^2 + ||A^T u - s v||^2) bounds the distance from s to a singular value
(or 0) by r / sqrt(2): (u, v) / sqrt(2) is a unit vector with that residual for the symmetric
[[0, A], [A^T, 0]] (Bauer-Fike). No extra products are spent on it.

Bottom values (``bottom`` > 0): the smallest singular values of B are the smallest Ritz values
of A on span(V), upper bounds on the smallest singular values of A (Cauchy interlacing), with
the same free certificate. A thick restart would discard them, so the basis then holds the
whole budget; the run stops when the top is certified (or the bottom too), or the budget is
spent, and the bottom comes with whatever bound the space gives (honest, rarely converged:
the small end of a smoothly decaying spectrum needs far more products than the top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .operators import RowOperator

WORK = torch.float64
BASIS_BYTES = 2**28  # memory for a no-restart basis (bottom values): 256 MiB
COLUMN_CHUNK = 2**16  # columns per step of a basis recombination (temporaries of <= 32 MiB)


@dataclass
class Triplets:
    """Top singular triplets of A with their certified bounds and cost."""

    values: Tensor  # (k,) descending
    errors: Tensor  # bound on |s - nearest singular value (or 0)|
    residuals: Tensor  # sqrt(||A v - s u||^2 + ||A^T u - s v||^2)
    right: Tensor  # (k, cols) right singular vectors (rows)
    converged: bool
    bottom: Triplets | None = None  # the smallest Ritz triplets (ascending rank), if asked


class _Side:
    """Orthonormal rows of one side (float64) and the raw products of the other side's map
    (``image_dtype``: the operator's, exact for what it computed)."""

    def __init__(self, capacity: int, size: int, image_size: int, image_dtype) -> None:
        self.rows = torch.zeros(capacity, size, dtype=WORK)
        self.images = torch.zeros(capacity, image_size, dtype=image_dtype)
        self.count = 0

    def orthogonalise(self, vector: Tensor) -> tuple[Tensor, Tensor]:
        """(coefficients on the current rows, the remainder), two Gram-Schmidt passes."""
        basis = self.rows[: self.count]
        coefficients = basis @ vector
        vector = vector - coefficients @ basis
        again = basis @ vector
        return coefficients + again, vector - again @ basis

    def append(self, row: Tensor) -> None:
        self.rows[self.count] = row
        self.count += 1


def _unit_or_fresh(
    remainder: Tensor, side: _Side, scale: float, generator: torch.Generator
) -> tuple[Tensor, float]:
    """The normalised remainder and its norm, or a fresh random direction orthogonal to the
    side (norm 0) when the remainder vanished (an invariant subspace was found)."""
    norm = float(remainder.norm())
    if norm > 1e-13 * max(scale, 1e-300):
        return remainder / norm, norm
    fresh = torch.randn(remainder.shape[0], generator=generator, dtype=WORK)
    for _ in range(2):
        fresh = side.orthogonalise(fresh)[1]
    return fresh / fresh.norm(), 0.0


def largest_triplets(
    operator: RowOperator,
    k: int,
    tol: float,
    max_products: int,
    generator: torch.Generator,
    start: Tensor | None = None,
    basis_size: int | None = None,
    bottom: int = 0,
    stop_at_top: bool = False,
) -> Triplets:
    """The k largest singular triplets of ``operator`` (module docstring), each certified to
    error <= tol * s (or a residual at rounding level), within ``max_products`` products;
    ``bottom`` > 0 also returns that many smallest Ritz triplets (``Triplets.bottom``), run
    until they are certified too, or only until the top is (``stop_at_top``)."""
    rows, cols = operator.shape
    dtype = operator.dtype
    capacity = min(basis_size or max(4 * k, k + 48), cols, rows)
    capacity = min(capacity, max(k, max_products // 2))  # no room the budget cannot fill
    if bottom:  # no restart: the whole budget stays in the basis, within BASIS_BYTES
        affordable = BASIS_BYTES // (32 * (rows + cols))  # 2 sides x (rows + images), float64
        capacity = min(max(min(max_products // 2, affordable), k + bottom), cols, rows)
    right = _Side(capacity + 1, cols, rows, dtype)  # V and A V
    left = _Side(capacity, rows, cols, dtype)  # U and A^T U
    coupling = torch.zeros(capacity + 1, capacity, dtype=WORK)  # [l, i] = <v_l, A^T u_i>
    first = torch.randn(cols, generator=generator, dtype=WORK)
    if start is not None and start.ndim == 2 and start.shape[1] == cols and len(start):
        first = start.to(WORK).sum(dim=0) + 1e-3 * first / math.sqrt(cols)
    right.append(first / first.norm())
    rounding = 50 * torch.finfo(dtype).eps
    scale, spent = 0.0, 0
    while True:
        j = left.count
        product = operator.matmat_rows(right.rows[j : j + 1].to(dtype))[0]
        right.images[j] = product
        image = product.to(WORK)
        coefficients, remainder = left.orthogonalise(image)
        coupling[j, :j] = coefficients
        scale = max(scale, float(image.norm()))
        u, alpha = _unit_or_fresh(remainder, left, scale, generator)
        coupling[j, j] = alpha
        left.append(u)
        product = operator.rmatmat_rows(u[None].to(dtype))[0]
        left.images[j] = product
        pulled = product.to(WORK)
        coefficients, remainder = right.orthogonalise(pulled)
        coupling[: j + 1, j] = coefficients
        v, beta = _unit_or_fresh(remainder, right, scale, generator)
        coupling[j + 1, j] = beta
        right.append(v)
        spent += 2
        size = left.count
        if size < min(k + bottom, capacity):
            continue
        p, sigma, qt = torch.linalg.svd(coupling[:size, :size].T)
        scale = max(scale, float(sigma[0]))
        top, low = slice(0, k), slice(size - bottom, size)
        ok = _implicitly_certified(coupling[size, :size], p, sigma, top, tol, rounding * scale)
        if bottom and not stop_at_top:
            ok = (
                ok
                & _implicitly_certified(
                    coupling[size, :size], p, sigma, low, tol, rounding * scale
                ).all()
            )
        exhausted = spent + 2 > max_products or size >= min(rows, cols)
        exhausted = exhausted or (bottom > 0 and size == capacity)
        if bool(ok.all()) or exhausted:
            result = _certify(right, left, p[:, top], sigma[top], qt[top], tol, rounding * scale)
            if bottom:
                result.bottom = _certify(
                    right, left, p[:, low], sigma[low], qt[low], tol, rounding * scale
                )
                done = result.converged and (stop_at_top or result.bottom.converged)
            else:
                done = result.converged
            if done or exhausted:
                return result
        if size == capacity:
            _thick_restart(right, left, coupling, p, sigma, qt, keep=max(k, capacity // 2))


def _implicitly_certified(edge, p, sigma, wanted: slice, tol: float, floor: float) -> Tensor:
    """The recurrence's residual bound |b . p_i| / sqrt(2) <= tol * s_i (or at rounding level)
    for the Ritz values ``wanted`` (no product; the explicit ``_certify`` decides)."""
    implicit = (edge @ p[:, wanted]).abs()
    return (implicit / math.sqrt(2) <= tol * sigma[wanted]) | (implicit <= floor)


def _thick_restart(right, left, coupling, p, sigma, qt, keep: int) -> None:
    """Keep the ``keep`` best Ritz vectors of each side plus the newest right vector."""
    size = left.count
    newest = right.rows[size].clone()
    edge = coupling[size, :size] @ p[:, :keep]
    for matrix, mix in (
        (right.rows, qt[:keep]),
        (right.images, qt[:keep]),
        (left.rows, p[:, :keep].T),
        (left.images, p[:, :keep].T),
    ):
        _recombine(matrix, mix)
    right.rows[keep] = newest
    right.count, left.count = keep + 1, keep
    coupling.zero_()
    coupling[:keep, :keep] = torch.diag(sigma[:keep])
    coupling[keep, :keep] = edge


def _recombine(matrix: Tensor, mix: Tensor) -> None:
    """matrix[:m] = mix @ matrix[:n] in place (mix is m x n, m <= n), by column chunks in
    float64: no full-size temporary beside the basis."""
    m, n = mix.shape
    for start in range(0, matrix.shape[1], COLUMN_CHUNK):
        columns = slice(start, start + COLUMN_CHUNK)
        matrix[:m, columns] = mix @ matrix[:n, columns].to(WORK)


def _squared_residuals(mix: Tensor, images: Tensor, sigma: Tensor, ritz) -> Tensor:
    """||mix @ images - sigma * ritz(columns)||^2 per row, by column chunks: with the images of
    one side and ``ritz`` the far side's Ritz vectors on those columns, ||A v - s u||^2 or
    ||A^T u - s v||^2 without a full-size temporary."""
    total = torch.zeros(len(sigma), dtype=WORK)
    for start in range(0, images.shape[1], COLUMN_CHUNK):
        columns = slice(start, start + COLUMN_CHUNK)
        gap = mix @ images[:, columns].to(WORK) - sigma[:, None] * ritz(columns)
        total += gap.pow(2).sum(dim=1)
    return total


def _certify(right, left, p, sigma, qt, tol, floor) -> Triplets:
    """Explicit residuals of the Ritz triplets from the stored raw products (no new ones)."""
    size = left.count
    v = qt @ right.rows[:size]
    u = lambda columns: p.T @ left.rows[:size, columns]  # noqa: E731 (u by chunks only)
    forward = _squared_residuals(qt, right.images[:size], sigma, u)
    backward = _squared_residuals(p.T, left.images[:size], sigma, lambda columns: v[:, columns])
    residual = torch.sqrt(forward + backward)
    error = residual / math.sqrt(2)
    ok = (error <= tol * sigma) | (residual <= floor)
    return Triplets(sigma, error, residual, v, bool(ok.all()))
