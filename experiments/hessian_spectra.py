"""Hessian spectra of the loss, plain vs residual, 20 and 56 layers, at init and trained.

A wrapper: the code is gradflow/experiments/hessian_spectra.py, and
`gradflow reproduce hessian_spectra` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.hessian_spectra import main

if __name__ == "__main__":
    sys.exit(entry(main))
