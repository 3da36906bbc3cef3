"""Evidence beyond the ResNet paper: signal propagation, shattered gradients, lesions.

- ``signal_propagation`` (Brock, De and Smith 2021): channel mean and variance at block
  boundaries, branch variance, and the gradient split between shortcut and branch;
- ``shattered_gradients`` (Balduzzi et al. 2017): correlation of input gradients along a
  line of inputs, as a function of the lag;
- ``lesion_study`` (Veit, Wilber and Belongie 2016): error after removing blocks.
"""

from .blocks import BlockSpec, resolve_blocks
from .lesion import Lesioned, Lesions, error_percent, lesion_study, lesioned_model
from .shattered import shattered_gradients, shattering_summary
from .signal import SIGNAL_QUANTITIES, signal_propagation

__all__ = [
    "SIGNAL_QUANTITIES",
    "BlockSpec",
    "Lesioned",
    "Lesions",
    "error_percent",
    "lesion_study",
    "lesioned_model",
    "resolve_blocks",
    "shattered_gradients",
    "shattering_summary",
    "signal_propagation",
]
