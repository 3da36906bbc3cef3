"""Models from outside the zoo: ``torchvision:NAME`` and ``path/to/file.py:factory``."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..errors import UserInputError


def _torchvision_model(name: str, options: dict) -> nn.Module:
    try:
        import torchvision.models as tv_models
    except ImportError:
        raise UserInputError(
            f"torchvision:{name} needs torchvision, which is not installed; "
            "install it with `pip install 'gradflow[vision]'`"
        ) from None
    available = tv_models.list_models(module=tv_models)
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else "see torchvision.models"
        raise UserInputError(f"torchvision has no model {name!r}: {hint}")
    options.setdefault("weights", None)  # never download weights
    return tv_models.get_model(name, **options)


def _load_factory(path: str, factory: str) -> Callable[..., nn.Module]:
    """Import ``path`` once (cached in sys.modules) and return its callable ``factory``."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(
            f"model file {path!r} does not exist (expected path/to/file.py:factory)"
        )
    module_name = f"gradflow_user_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        try:
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as err:  # the user's code: report, do not crash
            sys.modules.pop(module_name, None)
            raise UserInputError(f"could not import {path}: {type(err).__name__}: {err}") from err
    fn = getattr(module, factory, None)
    if not callable(fn):
        names = [n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise UserInputError(
            f"{path} has no callable {factory!r}; callables there: {', '.join(names) or 'none'}"
        )
    return fn


def accepted_options(spec: str, options: dict) -> dict:
    """The subset of ``options`` that the factory of ``path.py:factory`` accepts by name."""
    source, _, name = spec.rpartition(":")
    params = inspect.signature(_load_factory(source, name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {key: value for key, value in options.items() if key in params}


def _file_factory(path: str, factory: str, options: dict) -> nn.Module:
    fn = _load_factory(path, factory)
    try:
        model = fn(**options)
    except TypeError as err:
        raise UserInputError(f"{path}:{factory} does not accept these options: {err}") from err
    if not isinstance(model, nn.Module):
        raise UserInputError(f"{path}:{factory} returned {type(model).__name__}, not an nn.Module")
    return model


def create_external(spec: str, **options) -> nn.Module:
    """Build ``torchvision:NAME`` (no weights) or call ``file.py:factory(**options)``."""
    source, _, name = spec.rpartition(":")
    if not source or not name:
        raise UserInputError(
            f"cannot read model {spec!r}: use torchvision:NAME or path/file.py:factory"
        )
    if source == "torchvision":
        return _torchvision_model(name, dict(options))
    return _file_factory(source, name, dict(options))
