"""Lesion study (Veit et al. 2016): test error of trained nets with blocks removed.

A wrapper: the code is gradflow/experiments/lesion_study.py, and
`gradflow reproduce lesion_study` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.lesion_study import main

if __name__ == "__main__":
    sys.exit(entry(main))
