"""The Jacobian of any tensor function at a point, as a linear operator that is never formed.

``J = d fn(x) / d x`` (shape m x n) speaks scipy.sparse.linalg's vocabulary: ``shape``,
``dtype``, ``matvec``/``rmatvec`` on vectors, ``matmat``/``rmatmat`` on columns, ``.T`` (a
transposed view with the same vocabulary) and ``as_linear_operator()`` (a scipy
``LinearOperator``). The native form is a block of *rows*: ``matmat_rows(V)`` maps (p, n) to
(p, m), batched over the rows with ``torch.func.vmap``. ``J v`` comes from forward mode
(``torch.func.jvp``, batched; one vector at a time from a double vjp wherever it exists:
forward-mode AD cost 2.5x more for one resnet56 stage-1 product and 2-4x for tanh MLPs; a
fixed rule, never a timing, since the two routes differ at rounding level and a timed race
made one command with one seed write different spectra), or, where an
operation has no forward-mode derivative, always from the vjp of the vjp
(``route = "double_vjp"``: J v = d/du <J^T u, v>, exact since J^T u is linear in u; warned
once). ``torch.func.linearize`` was measured too: 2x cheaper products, but its trace cost
10 s for the resnet56 stage-1 map, more than a whole top-16 solve. ``J^T u`` is a cached
``torch.func.vjp``. Every product is counted in ``products``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from ..errors import UserInputError
from ..memory import (
    MAX_VECTORS_PER_CHUNK,
    product_bytes_per_vector,
    release_large_frees,
    vectors_per_chunk,
)

TensorFunction = Callable[[Tensor], Tensor]
ROUTES = ("forward", "double_vjp")
# Probe generators are seeded with seed + this offset, so that seed=0 does not replay the
# stream of torch.manual_seed(0) that typically drew the user's weights (correlated probes).
SEED_OFFSET = 0x6A09E667
TRAIN_BN_MESSAGE = (
    "the function updates a tensor in place (BatchNorm in training mode updates its running "
    "statistics at every call, and mixes the samples). Pass the model in eval mode "
    "(model.eval()), or a copy calibrated on a probe batch: gf.calibrated_copy(model, x)"
)


def probe_generator(seed: int) -> torch.Generator:
    """A private random generator for probe vectors (the global RNG is never used)."""
    return torch.Generator().manual_seed(SEED_OFFSET + int(seed))


def check_not_training_batchnorm(fn: object) -> None:
    """UserInputError if ``fn`` (a module or its bound method) holds a train-mode BatchNorm that
    tracks running statistics (checked before any product runs, so nothing is modified)."""
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    if not isinstance(owner, nn.Module):
        return
    for module in owner.modules():
        if (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.training
            and module.track_running_stats
        ):
            raise UserInputError(TRAIN_BN_MESSAGE)


def _is_training_batchnorm_error(err: Exception) -> bool:
    text = str(err)
    return (
        ("inplace" in text.replace("-", "") and "vmap" in text)
        or "mutate a captured Tensor" in text
        or "Expected more than 1 value per channel when training" in text
    )


@contextmanager
def composite_kernels() -> Iterator[None]:
    """Attention by its math (composite) kernel and RNNs without mkldnn: slower fused kernels
    aside, every operation then has derivatives of every order."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), torch.backends.mkldnn.flags(enabled=False):
        yield


class RowOperator:
    """Shared vocabulary of a linear map given by its batched row products.

    Subclasses define ``shape``, ``dtype``, ``matmat_rows`` ((p, n) -> (p, m)) and
    ``rmatmat_rows`` ((p, m) -> (p, n)); everything else follows.
    """

    shape: tuple[int, int]
    dtype: torch.dtype

    def matmat_rows(self, vectors: Tensor) -> Tensor:
        raise NotImplementedError

    def rmatmat_rows(self, vectors: Tensor) -> Tensor:
        raise NotImplementedError

    def matvec(self, vector: Tensor) -> Tensor:
        """J v: (n,) -> (m,)."""
        return self.matmat_rows(vector.reshape(1, -1))[0]

    def rmatvec(self, vector: Tensor) -> Tensor:
        """J^T u: (m,) -> (n,)."""
        return self.rmatmat_rows(vector.reshape(1, -1))[0]

    def matmat(self, columns: Tensor) -> Tensor:
        """J X on columns, as scipy: (n, p) -> (m, p)."""
        return self.matmat_rows(columns.T).T

    def rmatmat(self, columns: Tensor) -> Tensor:
        """J^T Y on columns, as scipy: (m, p) -> (n, p)."""
        return self.rmatmat_rows(columns.T).T

    @property
    def T(self) -> RowOperator:  # numpy/scipy spelling
        return TransposedOperator(self)

    def tall(self) -> RowOperator:
        """This map if it has at least as many rows as columns, else its transpose (whose Gram
        A^T A has exactly the min(m, n) squared singular values, no spurious zeros)."""
        return self if self.shape[0] >= self.shape[1] else self.T

    def as_linear_operator(self, dtype: type = np.float64):
        """A ``scipy.sparse.linalg.LinearOperator`` (numpy in and out, products in
        ``self.dtype``), for scipy's solvers (``svds``, ``lobpcg``, ...)."""
        from scipy.sparse.linalg import LinearOperator

        def through(method: Callable[[Tensor], Tensor]) -> Callable:
            def apply(array: np.ndarray) -> np.ndarray:
                block = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
                rows = block.reshape(1, -1) if block.ndim == 1 else block.T
                result = method(rows.to(self.dtype)).double().numpy().astype(dtype, copy=False)
                return result[0] if block.ndim == 1 else result.T

            return apply

        rows_of = through(self.matmat_rows)
        rows_of_transpose = through(self.rmatmat_rows)
        return LinearOperator(
            self.shape, matvec=rows_of, rmatvec=rows_of_transpose, matmat=rows_of,
            rmatmat=rows_of_transpose, dtype=dtype,
        )  # fmt: skip


class TransposedOperator(RowOperator):
    """J^T as a view: the same products with the roles of the two sides exchanged."""

    def __init__(self, operator: RowOperator) -> None:
        self.operator = operator
        self.shape = (operator.shape[1], operator.shape[0])
        self.dtype = operator.dtype

    @property
    def products(self) -> int:
        return self.operator.products

    @property
    def T(self) -> RowOperator:
        return self.operator

    def matmat_rows(self, vectors: Tensor) -> Tensor:
        return self.operator.rmatmat_rows(vectors)

    def rmatmat_rows(self, vectors: Tensor) -> Tensor:
        return self.operator.matmat_rows(vectors)


def _bytes_per_vector(fn: TensorFunction, x: Tensor) -> int:
    """``gradflow.memory.product_bytes_per_vector``, 0 (unknown) where fn fails under plain
    autograd although torch.func ran it."""
    try:
        return product_bytes_per_vector(fn, x)
    except (RuntimeError, NotImplementedError):
        return 0


class JacobianOperator(RowOperator):
    """J = d fn / d x at x (shape (m, n) with n = x.numel(), m = fn(x).numel()), matrix-free.

    ``route``: how J v is computed, "forward" (linearised jvp) or "double_vjp" (when fn has an
    operation without forward-mode AD; chosen on the first product, with one warning), or
    None before the first J v. ``products`` counts single Jacobian(-transpose)-vector products.
    Batched products take ``chunk_size`` vectors at a time: at most the given number, fewer
    where that many would not fit ``budget_mib`` at ``bytes_per_vector`` each
    (``gradflow.memory.vectors_per_chunk``; default: ``product_budget_mib()``). Chunking
    changes no value beyond float rounding.
    """

    def __init__(
        self,
        fn: TensorFunction,
        x: Tensor,
        chunk_size: int = MAX_VECTORS_PER_CHUNK,
        budget_mib: float | None = None,
    ) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise UserInputError("the point x must be a floating-point torch.Tensor")
        if not torch.isfinite(x).all():
            raise UserInputError("the point x contains NaN or Inf; spectra need a finite input")
        check_not_training_batchnorm(fn)
        self.fn = fn
        self.x = x.detach()
        try:
            with torch.no_grad():
                output, self._vjp_fn = vjp(fn, self.x)
        except (RuntimeError, ValueError) as err:
            if _is_training_batchnorm_error(err):
                raise UserInputError(TRAIN_BN_MESSAGE) from None
            raise
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
        self.shape = (self.m, self.n)
        self.dtype = self.x.dtype
        self.bytes_per_vector = _bytes_per_vector(fn, self.x)
        self.chunk_size = vectors_per_chunk(self.bytes_per_vector, chunk_size, budget_mib)
        self.products = 0
        self.route: str | None = None
        self._tangent: Callable[[Tensor], Tensor] | None = None
        self._vmap = True
        self._single_tangent: Callable[[Tensor], Tensor] | None = None  # one J v (_single)
        self._composite = False  # True once the vjp was retraced with composite kernels

    def _forward_route(self) -> Callable[[Tensor], Tensor]:
        return lambda tangent: jvp(self.fn, (self.x,), (tangent,))[1]

    def _double_vjp_route(self) -> Callable[[Tensor], Tensor]:
        """J v as the vjp of u -> J^T u (linear in u, so any base point, here 0, is exact).

        Where a fused kernel's backward has no derivative itself (flash attention, mkldnn
        RNNs), the inner vjp is re-traced with composite kernels (math attention, no mkldnn).
        """
        zero = torch.zeros(self.out_shape, dtype=self.dtype)
        probe = torch.zeros(self.in_shape, dtype=self.dtype)
        for composite in (False, True):
            kernels = composite_kernels() if composite else nullcontext()
            with kernels, torch.enable_grad():
                _, inner = vjp(self.fn, self.x)

            def tangent(vector: Tensor, inner=inner, composite=composite) -> Tensor:
                with composite_kernels() if composite else nullcontext():
                    return vjp(lambda u: inner(u)[0], zero)[1](vector)[0]

            try:
                with torch.no_grad():
                    tangent(probe)
                return tangent
            except (RuntimeError, NotImplementedError):
                if composite:
                    raise
        raise AssertionError("unreachable")

    def _single(self, tangent: Tensor) -> Tensor:
        """One J v on the forward route: by the double vjp where it exists, else by jvp (module
        docstring: a fixed rule, so that the same call gives the same bits)."""
        if self._single_tangent is None:
            try:
                self._single_tangent = self._double_vjp_route()
            except (RuntimeError, NotImplementedError):
                self._single_tangent = self._tangent  # no double vjp here: jvp it is
        try:
            with torch.no_grad():
                return self._single_tangent(tangent)
        except (RuntimeError, NotImplementedError):
            if self._single_tangent is self._tangent:
                raise
            self._single_tangent = self._tangent
            return self._tangent(tangent)

    def _batched(self, function: Callable[[Tensor], Tensor], batch: Tensor) -> Tensor:
        """``function`` on every row of ``batch``: vmapped, or one at a time where an operation
        has no batching rule (e.g. the mkldnn LSTM backward) or for a single row; the freed
        working set of a large product goes back to the system (``release_large_frees``)."""
        with release_large_frees(batch.shape[0] * self.bytes_per_vector):
            return self._batched_products(function, batch)

    def _batched_products(self, function: Callable[[Tensor], Tensor], batch: Tensor) -> Tensor:
        try:
            with torch.no_grad():
                if batch.shape[0] == 1 or not self._vmap:
                    return torch.stack([function(item) for item in batch])
                try:
                    return _chunked(vmap(function), batch, self.chunk_size)
                except RuntimeError as err:
                    if _is_training_batchnorm_error(err):
                        raise
                    self._vmap = False  # no batching rule: loop over the rows from now on
                    return torch.stack([function(item) for item in batch])
        except (RuntimeError, ValueError) as err:
            if _is_training_batchnorm_error(err):
                raise UserInputError(TRAIN_BN_MESSAGE) from None
            raise

    def _choose_route(self, tangents: Tensor) -> Tensor:
        """The first J V: the forward route, or where it fails the double vjp (warned once)."""
        try:
            tangent = self._forward_route()
            result = self._batched(tangent, tangents)
            self.route, self._tangent = "forward", tangent
            return result
        except UserInputError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            forward_error = err
        reason = str(forward_error).strip().splitlines()[0][:160]
        try:
            tangent = self._double_vjp_route()
            result = self._batched(tangent, tangents)
        except (RuntimeError, NotImplementedError) as err:
            raise UserInputError(
                f"no J v for this function: forward mode failed ({reason}) and so did the "
                f"double vjp ({str(err).strip().splitlines()[0][:160]})"
            ) from None
        warnings.warn(
            f"gradflow: J v by double vjp (reverse over reverse), since forward-mode AD "
            f"failed: {reason}",
            stacklevel=4,
        )
        self.route, self._tangent = "double_vjp", tangent
        return result

    def matmat_rows(self, vectors: Tensor) -> Tensor:
        """Rows of J V: (p, n) -> (p, m), forward mode (or double vjp), batched."""
        count = vectors.shape[0]
        tangents = vectors.reshape(count, *self.in_shape).to(self.dtype)
        if self._tangent is None:
            result = self._choose_route(tangents)
        elif count == 1 and self.route == "forward":
            result = self._single(tangents[0])[None]
        else:
            result = self._batched(self._tangent, tangents)
        self.products += count
        return result.reshape(count, self.m)

    def rmatmat_rows(self, vectors: Tensor) -> Tensor:
        """Rows of J^T U: (p, m) -> (p, n), reverse mode on the cached forward, batched."""
        count = vectors.shape[0]
        cotangents = vectors.reshape(count, *self.out_shape).to(self.dtype)
        try:
            result = self._batched(lambda u: self._vjp_fn(u)[0], cotangents)
        except RuntimeError:
            if self._composite:
                raise
            self._composite = True  # a fused kernel's backward failed: retrace without it
            with composite_kernels(), torch.no_grad():
                _, self._vjp_fn = vjp(self.fn, self.x)
            result = self._batched(lambda u: self._vjp_fn(u)[0], cotangents)
        self.products += count
        return result.reshape(count, self.n)

    def dense(self) -> Tensor:
        """The m x n Jacobian itself, by whichever mode needs fewer products (min(m, n))."""
        if self.n <= self.m:
            return self.matmat_rows(torch.eye(self.n, dtype=self.dtype)).T.contiguous()
        return self.rmatmat_rows(torch.eye(self.m, dtype=self.dtype))


def _chunked(function: Callable[[Tensor], Tensor], batch: Tensor, size: int) -> Tensor:
    """``function`` on ``batch`` by row chunks of ``size``, written into one output (vmap's own
    chunk_size concatenates: the chunks' results and their concatenation, twice the output)."""
    if batch.shape[0] <= size:
        return function(batch)
    first = function(batch[:size])
    result = first.new_empty((batch.shape[0], *first.shape[1:]))
    result[:size] = first
    del first
    for start in range(size, batch.shape[0], size):
        result[start : start + size] = function(batch[start : start + size])
    return result


class TallView:
    """Backwards-compatible name for ``operator.tall()`` (A = J, or J^T when m < n).

    ``apply`` / ``apply_transpose`` are A's ``matmat_rows`` / ``rmatmat_rows``.
    """

    def __init__(self, operator: JacobianOperator) -> None:
        self.operator = operator
        self.view = operator.tall()
        self.transposed = self.view is not operator
        self.rows, self.cols = self.view.shape

    def apply(self, vectors: Tensor) -> Tensor:
        """Rows of A V: (p, cols) -> (p, rows)."""
        return self.view.matmat_rows(vectors)

    def apply_transpose(self, vectors: Tensor) -> Tensor:
        """Rows of A^T U: (p, rows) -> (p, cols)."""
        return self.view.rmatmat_rows(vectors)
