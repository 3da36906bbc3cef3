"""gradflow: how gradients flow through deep networks, as tidy DataFrames and figures.

>>> import gradflow as gf
>>> model = gf.create_model("resnet56", init="zero_gamma")
>>> df = gf.record(model, x, y)                 # per-layer responses and gradient norms
>>> sp = gf.block_spectra(model, x, k=8)        # block and cumulative Jacobian spectra
>>> res = gf.analyze(["plain56", "resnet56"])   # what `gradflow analyze` runs
"""

from . import testing
from .analyze import AnalysisResult, analyze
from .data import DATASETS, ImageDataset, load_dataset, train_val_split
from .errors import UserInputError
from .models import (
    count_macs,
    count_parameters,
    create_model,
    get_model_info,
    list_models,
    register,
)
from .record import FRAME_COLUMNS, QUANTITIES, NonFiniteError, Recorder, record, to_wide
from .spectra import (
    SpectrumResult,
    block_spectra,
    calibrated_copy,
    cumulative_singular_values,
    frobenius_norm,
    singular_values,
    spectral_density,
    summarize_spectra,
)
from .state import ModelState, preserved_buffers, preserved_rng
from .structure import structure  # the function (gradflow.structure the module stays importable)
from .train import TrainConfig, TrainResult  # train() stays gradflow.train.train

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "FRAME_COLUMNS",
    "QUANTITIES",
    "AnalysisResult",
    "ImageDataset",
    "ModelState",
    "NonFiniteError",
    "Recorder",
    "SpectrumResult",
    "TrainConfig",
    "TrainResult",
    "UserInputError",
    "__version__",
    "analyze",
    "block_spectra",
    "calibrated_copy",
    "count_macs",
    "count_parameters",
    "create_model",
    "cumulative_singular_values",
    "frobenius_norm",
    "get_model_info",
    "list_models",
    "load_dataset",
    "preserved_buffers",
    "preserved_rng",
    "record",
    "register",
    "singular_values",
    "spectral_density",
    "structure",
    "summarize_spectra",
    "testing",
    "to_wide",
    "train_val_split",
]
