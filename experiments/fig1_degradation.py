"""Paper Figure 1: plain-20 vs plain-56, training and test error vs iterations.

A wrapper: the code is gradflow/experiments/fig1_degradation.py, and
`gradflow reproduce fig1_degradation` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.fig1_degradation import main

if __name__ == "__main__":
    sys.exit(entry(main))
