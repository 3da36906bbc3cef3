"""Paper Figure 7: std of the layer responses of trained plain and residual CIFAR nets.

A wrapper: the code is gradflow/experiments/fig7_response_std.py, and
`gradflow reproduce fig7_response_std` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.fig7_response_std import main

if __name__ == "__main__":
    sys.exit(entry(main))
