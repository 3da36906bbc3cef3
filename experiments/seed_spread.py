"""Seed spread: plain vs ResNet-20/56 and he vs zero-gamma ResNet-56 over several seeds.

A wrapper: the code is gradflow/experiments/seed_spread.py, and
`gradflow reproduce seed_spread` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.seed_spread import main

if __name__ == "__main__":
    sys.exit(entry(main))
