"""Jacobian spectra: singular values of blocks and of cumulative products, exact and fast.

``singular_values`` (any tensor function at a point), ``cumulative_singular_values`` (top
values of every product J_d ... J_1 in one walk over the depths), ``spectral_density`` /
``frobenius_norm`` (whole-spectrum estimates), ``block_spectra`` (per block J_H, I+J_F, J_F
and cumulative ``prod``, as a tidy frame) and ``summarize_spectra``; ``hessian_spectra``
(curvature of the loss: Hessian eigenvalues, trace, density, per block and whole).
"""

from .blocks import block_spectra, calibrated_copy, check_spectra_cost, summarize_spectra
from .cumulative import StepChain, cumulative_singular_values
from .density import FrobeniusEstimate, density_summary, frobenius_norm, spectral_density
from .hessian import hessian_spectra
from .operators import JacobianOperator
from .solvers import SpectrumResult, singular_values

__all__ = [
    "FrobeniusEstimate",
    "JacobianOperator",
    "SpectrumResult",
    "StepChain",
    "block_spectra",
    "calibrated_copy",
    "check_spectra_cost",
    "cumulative_singular_values",
    "density_summary",
    "frobenius_norm",
    "hessian_spectra",
    "singular_values",
    "spectral_density",
    "summarize_spectra",
]
