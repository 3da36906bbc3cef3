"""Shattered gradients (Balduzzi et al. 2017) and signal propagation (Brock et al. 2021) at init.

A wrapper: the code is gradflow/experiments/shattered_gradients.py, and
`gradflow reproduce shattered_gradients` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.shattered_gradients import main

if __name__ == "__main__":
    sys.exit(entry(main))
