"""Models from outside the zoo: ``torchvision:NAME``, ``hf:NAME`` and ``path/to/file.py:factory``.

A model file is imported only when the user names it (once; cached in ``sys.modules``), and
everything it does wrong is a one-line UserInputError naming the file and the function.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from torch import nn

from ..errors import UserInputError

SPEC_HELP = "use torchvision:NAME, hf:MODEL_TYPE or path/to/file.py:FACTORY"


def one_line(err: BaseException) -> str:
    """``Type: message`` of an exception from user code, on one line (at most 300 chars)."""
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message[:300]}" if message else type(err).__name__


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


def defined_functions(path: str) -> list[str]:
    """Top-level function names of a Python file, read without running it."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def missing_factory_error(path: str) -> UserInputError:
    """What to pass when a model file is named without ``:FACTORY``."""
    names = [n for n in defined_functions(path) if not n.startswith("_")]
    example = f"{path}:{names[0]}" if names else f"{path}:FACTORY"
    found = f" (functions there: {', '.join(names)})" if names else ""
    return UserInputError(f"model file {path} needs a factory: pass {example}{found}")


def load_model_file(path: str) -> ModuleType:
    """Import the user's model file once (cached in sys.modules); failures in one line."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"model file {path!r} does not exist (pass path/to/file.py:FACTORY)")
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
            raise UserInputError(f"could not import {path}: {one_line(err)}") from err
    return module


def file_function(module: ModuleType, path: str, name: str) -> Callable:
    """The callable ``name`` of a loaded model file, or a one-line error listing the others."""
    fn = getattr(module, name, None)
    if not callable(fn):
        names = [n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise UserInputError(
            f"{path} has no callable {name!r}; callables there: {', '.join(names) or 'none'}"
        )
    return fn


def split_file_spec(spec: str) -> tuple[str, str]:
    path, _, factory = spec.rpartition(":")
    if not path or not factory:
        if spec.rstrip(":").endswith(".py"):
            raise missing_factory_error(spec.rstrip(":"))
        raise UserInputError(f"cannot read model {spec!r}: {SPEC_HELP}")
    return path, factory


def accepted_options(spec: str, options: dict) -> dict:
    """The subset of ``options`` that the model named by ``spec`` accepts by name.

    For ``path.py:factory`` the factory's keyword parameters; for ``hf:TYPE`` the config's
    fields.
    """
    if spec.startswith("hf:"):
        from .hf import accepted_hf_options

        return accepted_hf_options(spec[3:], options)
    path, name = split_file_spec(spec)
    params = inspect.signature(file_function(load_model_file(path), path, name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {key: value for key, value in options.items() if key in params}


def call_factory(fn: Callable, where: str, options: dict) -> nn.Module:
    """``fn(**options)``: unknown options, a raising factory or a non-Module in one line."""
    try:
        inspect.signature(fn).bind(**options)
    except TypeError as err:
        raise UserInputError(f"{where} does not accept these options: {err}") from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    try:
        model = fn(**options)
    except UserInputError:
        raise
    except Exception as err:  # the user's code: one line, no traceback
        raise UserInputError(f"{where} raised {one_line(err)}") from err
    if not isinstance(model, nn.Module):
        raise UserInputError(f"{where} returned {type(model).__name__}, not an nn.Module")
    return model


def create_external(spec: str, **options) -> nn.Module:
    """Build ``torchvision:NAME`` / ``hf:TYPE`` (random weights) or call ``file.py:factory``."""
    source, _, name = spec.partition(":")
    if source == "torchvision" and name:
        return _torchvision_model(name, dict(options))
    if source == "hf" and name:
        from .hf import create_hf_model

        return create_hf_model(name, **options)
    path, factory = split_file_spec(spec)
    return call_factory(file_function(load_model_file(path), path, factory), spec, options)
