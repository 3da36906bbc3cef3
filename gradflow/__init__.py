"""gradflow: how gradients flow through deep networks, as tidy DataFrames and figures."""

from .models import (
    count_macs,
    count_parameters,
    create_model,
    get_model_info,
    list_models,
    register,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_model_info",
    "list_models",
    "register",
]
