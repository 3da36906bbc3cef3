"""The Jacobian of any tensor function at a point, as a linear operator that is never formed.

``J = d fn(x) / d x`` is applied to blocks of vectors: ``J V`` by forward mode
(``torch.func.jvp``) and ``J^T U`` by reverse mode (a cached ``torch.func.vjp``), both
batched over the block with ``torch.func.vmap``, which on a CPU costs several times less per
vector than one product at a time. Every product is counted, so solvers can report cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from ..errors import UserInputError

TensorFunction = Callable[[Tensor], Tensor]
# Probe generators are seeded with seed + this offset, so that seed=0 does not replay the
# stream of torch.manual_seed(0) that typically drew the user's weights (correlated probes).
SEED_OFFSET = 0x6A09E667


def probe_generator(seed: int) -> torch.Generator:
    """A private random generator for probe vectors (the global RNG is never used)."""
    return torch.Generator().manual_seed(SEED_OFFSET + int(seed))


class JacobianOperator:
    """J = d fn / d x at x (shape m x n with n = x.numel(), m = fn(x).numel()), matrix-free.

    Vectors are rows of 2-D tensors: ``matmat(V)`` takes V of shape (p, n) and returns
    (J V^T)^T of shape (p, m); ``rmatmat(U)`` takes (p, m) and returns (J^T U^T)^T of shape
    (p, n). ``products`` counts single Jacobian(-transpose)-vector products.
    """

    def __init__(self, fn: TensorFunction, x: Tensor, chunk_size: int = 64) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise UserInputError("the point x must be a floating-point torch.Tensor")
        if not torch.isfinite(x).all():
            raise UserInputError("the point x contains NaN or Inf; spectra need a finite input")
        self.fn = fn
        self.x = x.detach()
        with torch.no_grad():
            output, self._vjp_fn = vjp(fn, self.x)
        if not isinstance(output, Tensor) or output.dtype != x.dtype:
            raise UserInputError(
                "fn must return one tensor of the same dtype as x "
                f"(got {type(output).__name__} {getattr(output, 'dtype', '')})"
            )
        if not torch.isfinite(output).all():
            raise UserInputError("fn(x) contains NaN or Inf; no Jacobian spectrum at this point")
        self.output = output.detach()
        self.in_shape = tuple(x.shape)
        self.out_shape = tuple(output.shape)
        self.n = x.numel()
        self.m = output.numel()
        self.chunk_size = chunk_size
        self.products = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def _tangent(self, tangent: Tensor) -> Tensor:
        return jvp(self.fn, (self.x,), (tangent,))[1]

    def _cotangent(self, cotangent: Tensor) -> Tensor:
        return self._vjp_fn(cotangent)[0]

    def matmat(self, vectors: Tensor) -> Tensor:
        """Rows of J V: (p, n) -> (p, m), forward mode, batched."""
        count = vectors.shape[0]
        tangents = vectors.reshape(count, *self.in_shape).to(self.dtype)
        with torch.no_grad():
            result = vmap(self._tangent, chunk_size=self.chunk_size)(tangents)
        self.products += count
        return result.reshape(count, self.m)

    def rmatmat(self, vectors: Tensor) -> Tensor:
        """Rows of J^T U: (p, m) -> (p, n), reverse mode on the cached forward, batched."""
        count = vectors.shape[0]
        cotangents = vectors.reshape(count, *self.out_shape).to(self.dtype)
        with torch.no_grad():
            result = vmap(self._cotangent, chunk_size=self.chunk_size)(cotangents)
        self.products += count
        return result.reshape(count, self.n)

    def dense(self) -> Tensor:
        """The m x n Jacobian itself, by whichever mode needs fewer products (min(m, n))."""
        if self.n <= self.m:
            identity = torch.eye(self.n, dtype=self.dtype)
            return self.matmat(identity).T.contiguous()
        identity = torch.eye(self.m, dtype=self.dtype)
        return self.rmatmat(identity)


class TallView:
    """A view of J as the tall matrix A (rows >= cols): J itself, or J^T when m < n.

    Solvers iterate on the Gram A^T A of size min(m, n), whose eigenvalues are exactly the
    squared singular values of J (no spurious zeros from the larger side).
    """

    def __init__(self, operator: JacobianOperator) -> None:
        self.operator = operator
        self.transposed = operator.m < operator.n
        self.rows = max(operator.m, operator.n)
        self.cols = min(operator.m, operator.n)

    def apply(self, vectors: Tensor) -> Tensor:
        """Rows of A V: (p, cols) -> (p, rows)."""
        if self.transposed:
            return self.operator.rmatmat(vectors)
        return self.operator.matmat(vectors)

    def apply_transpose(self, vectors: Tensor) -> Tensor:
        """Rows of A^T U: (p, rows) -> (p, cols)."""
        if self.transposed:
            return self.operator.matmat(vectors)
        return self.operator.rmatmat(vectors)
