"""One run-metadata schema (meta.json) for analyze, train and the experiments.

Every meta.json has ``config`` (the settings), ``command`` (the command line), ``data``
(``name``, ``description``, ``synthetic``: whether the images were generated in code, plus
what a command adds, e.g. image counts), ``wall_time_s`` (seconds this process spent) and
``versions``; each command adds its own keys beside these.
"""

from __future__ import annotations

import platform
import sys


def versions() -> dict[str, str]:
    """Versions of what produced a result."""
    import numpy as np
    import pandas as pd
    import torch

    from ._version import __version__

    return {
        "gradflow": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }


def data_meta(dataset, **extra: object) -> dict:
    """``data`` of meta.json: name, description, synthetic (generated in code) and ``extra``."""
    return {
        "name": dataset.name,
        "description": dataset.description,
        "synthetic": bool(dataset.is_synthetic),
        **extra,
    }


def run_meta(config: dict, data: dict, wall_time_s: float, **extra: object) -> dict:
    """meta.json of one run: the shared keys (module doc), then ``extra``."""
    return {
        "config": config,
        "command": " ".join(sys.argv),
        "data": data,
        "wall_time_s": round(wall_time_s, 2),
        "versions": versions(),
        **extra,
    }


def meta_data(meta: dict) -> dict:
    """``data`` of a meta.json, also from one written before the shared schema ("dataset")."""
    if "data" in meta and isinstance(meta["data"], dict):
        return meta["data"]
    old = dict(meta.get("dataset", {}))
    if "is_synthetic" in old:
        old["synthetic"] = old.pop("is_synthetic")
    return old


def meta_wall_time(meta: dict) -> float | None:
    """``wall_time_s`` of a meta.json, also from one written before the shared schema."""
    return meta.get("wall_time_s", meta.get("wall_seconds_this_process"))
