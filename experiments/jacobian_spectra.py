"""Cumulative Jacobian spectra vs depth, plain vs residual, at initialisation and trained.

A wrapper: the code is gradflow/experiments/jacobian_spectra.py, and
`gradflow reproduce jacobian_spectra` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.jacobian_spectra import main

if __name__ == "__main__":
    sys.exit(entry(main))
