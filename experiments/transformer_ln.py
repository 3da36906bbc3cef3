"""Pre-LN vs post-LN transformers at initialisation (Xiong et al. 2020): gradients and spectra.

A wrapper: the code is gradflow/experiments/transformer_ln.py, and
`gradflow reproduce transformer_ln` runs the same. Run it from the repository root:
reports/ is relative to the working directory.
"""

import sys

from gradflow.experiments.common import entry
from gradflow.experiments.transformer_ln import main

if __name__ == "__main__":
    sys.exit(entry(main))
