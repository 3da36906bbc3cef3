"""Paper Figure 4: ImageNet-style plain-18/34 vs ResNet-18/34, at a reduced size.

A wrapper: the code is gradflow/experiments/fig4_imagenet_style.py, and
`gradflow reproduce fig4_imagenet_style` runs the same. Run it from the repository root:
reports/ and runs/ are relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.fig4_imagenet_style import main

if __name__ == "__main__":
    sys.exit(entry(main))
