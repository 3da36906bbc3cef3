"""Paper Figure 6 / Table 6: plain and residual CIFAR nets of depth 20, 32, 44, 56 (110).

A wrapper: the code is gradflow/experiments/fig6_cifar_depth.py, and
`gradflow reproduce fig6_cifar_depth` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.fig6_cifar_depth import main

if __name__ == "__main__":
    sys.exit(entry(main))
