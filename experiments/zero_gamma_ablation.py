"""Zero-gamma ablation: ResNet-56 / ResNet-110 with he, zero_gamma, skipinit and fixup.

A wrapper: the code is gradflow/experiments/zero_gamma_ablation.py, and
`gradflow reproduce zero_gamma_ablation` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.zero_gamma_ablation import main

if __name__ == "__main__":
    sys.exit(entry(main))
