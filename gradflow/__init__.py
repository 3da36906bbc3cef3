"""gradflow: how gradients flow through deep networks, as tidy DataFrames and figures.

>>> import gradflow as gf
>>> model = gf.create_model("resnet56", init="zero_gamma")
>>> df = gf.record(model, x, y)                 # per-layer responses and gradient norms
>>> sp = gf.block_spectra(model, x, k=8)        # block and cumulative Jacobian spectra
>>> res = gf.analyze(["plain56", "resnet56"])   # what `gradflow analyze` runs
"""

import importlib
import sys
import types

from ._version import __version__

# public name -> the module that defines it; imported on first use (PEP 562), so that
# ``import gradflow`` (and ``gradflow --help``) does not pay for torch, pandas or pytest.
_EXPORTS = {
    "AnalysisResult": "analyze",
    "analyze": "analyze",
    "DATASETS": "data",
    "ImageDataset": "data",
    "load_dataset": "data",
    "train_val_split": "data",
    "UserInputError": "errors",
    "lesion_study": "evidence",
    "lesioned_model": "evidence",
    "shattered_gradients": "evidence",
    "shattering_summary": "evidence",
    "signal_propagation": "evidence",
    "count_macs": "models",
    "count_parameters": "models",
    "create_model": "models",
    "get_model_info": "models",
    "list_models": "models",
    "register": "models",
    "FRAME_COLUMNS": "record",
    "QUANTITIES": "record",
    "NonFiniteError": "record",
    "Recorder": "record",
    "record": "record_pass",
    "to_wide": "record",
    "SpectrumResult": "spectra",
    "block_spectra": "spectra",
    "calibrated_copy": "spectra",
    "cumulative_singular_values": "spectra",
    "frobenius_norm": "spectra",
    "hessian_spectra": "spectra",
    "singular_values": "spectra",
    "spectral_density": "spectra",
    "summarize_spectra": "spectra",
    "structure": "structure",
    "ModelState": "state",
    "preserved_buffers": "state",
    "preserved_rng": "state",
    "TrainConfig": "configs",
    "TrainResult": "train",  # train() stays gradflow.train.train
}
_SUBMODULES = ("testing", "summaries")


def __getattr__(name: str) -> object:
    """``gradflow.NAME`` from the module that defines it, imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """gradflow itself: ``gradflow.analyze`` and ``gradflow.record`` stay the functions.

    Importing a submodule sets the package attribute of its name to the module; for the two
    submodules named like the function they define, the function keeps the name (as the
    eager imports of earlier versions did), and the module stays in ``sys.modules``.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


_SHADOWED = ("analyze", "record", "structure")
sys.modules[__name__].__class__ = _Package


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
    "hessian_spectra",
    "lesion_study",
    "lesioned_model",
    "list_models",
    "load_dataset",
    "preserved_buffers",
    "preserved_rng",
    "record",
    "register",
    "shattered_gradients",
    "shattering_summary",
    "signal_propagation",
    "singular_values",
    "spectral_density",
    "structure",
    "summaries",
    "summarize_spectra",
    "testing",
    "to_wide",
    "train_val_split",
]
