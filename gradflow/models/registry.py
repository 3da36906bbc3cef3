"""Models by name: ``create_model``, ``list_models``, ``register``; listing is free.

Three kinds of names resolve:

- registered names (``resnet56``, or anything a user adds with ``@register``);
- family names with a depth (``resnet74``: any depth a family allows, listed or not);
- external names: ``torchvision:NAME``, ``hf:MODEL_TYPE`` and ``path/to/file.py:factory``
  (see ``external``).
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import UserInputError

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model name before building it."""

    name: str
    factory: Factory
    family: str = "user"
    depth: int | None = None
    blocks: int | None = None
    input_size: tuple[int, int, int] = (3, 32, 32)
    description: str = ""


@dataclass(frozen=True)
class Family:
    """A name prefix followed by a depth, e.g. ``resnet`` + ``74``."""

    prefix: str
    resolve: Callable[[int], ModelInfo]
    allowed: str


_MODELS: dict[str, ModelInfo] = {}
_FAMILIES: dict[str, Family] = {}
_NAME = re.compile(r"^([a-z_]+?)(\d+)$")


def register(
    name: str | None = None,
    *,
    family: str = "user",
    depth: int | None = None,
    input_size: tuple[int, int, int] = (3, 32, 32),
    description: str = "",
) -> Callable[[Factory], Factory]:
    """Decorator adding a model factory to the registry under ``name`` (default: its name).

    >>> @register("tiny_mlp", input_size=(1, 28, 28))
    ... def tiny_mlp(num_classes: int = 10) -> nn.Module: ...
    """

    def decorate(factory: Factory) -> Factory:
        key = name or factory.__name__
        if key in _MODELS:  # as timm does: replacing is allowed, but never silent
            old = _MODELS[key].factory
            warnings.warn(
                f"register: replacing model {key!r} ({old.__module__}.{old.__qualname__}) "
                f"with {factory.__module__}.{factory.__qualname__}",
                UserWarning,
                stacklevel=2,
            )
        _MODELS[key] = ModelInfo(
            key,
            factory,
            family=family,
            depth=depth,
            input_size=input_size,
            description=description or (inspect.getdoc(factory) or "").split("\n")[0],
        )
        return factory

    return decorate


def register_family(prefix: str, resolve: Callable[[int], ModelInfo], *, allowed: str) -> None:
    """Let ``prefix<depth>`` resolve through ``resolve(depth)``; ``allowed`` explains depths."""
    _FAMILIES[prefix] = Family(prefix, resolve, allowed)


def add_listed(info: ModelInfo) -> None:
    """List a family member by name (``gradflow models`` shows it)."""
    _MODELS[info.name] = info


def list_models(family: str | None = None) -> list[str]:
    """Registered model names in registration order, optionally of one family."""
    return [n for n, info in _MODELS.items() if family is None or info.family == family]


def _closest(name: str) -> str:
    candidates = list(_MODELS) + [f"{p}<depth>" for p in _FAMILIES]
    matches = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if matches:
        return "did you mean " + " or ".join(matches) + "?"
    return "run `gradflow models` to list the names"


def get_model_info(name: str) -> ModelInfo:
    """Resolve a name to its ModelInfo, or raise ValueError naming the closest names."""
    if name in _MODELS:
        return _MODELS[name]
    match = _NAME.match(name)
    if match and match.group(1) in _FAMILIES:
        family = _FAMILIES[match.group(1)]
        try:
            return family.resolve(int(match.group(2)))
        except ValueError as err:
            raise UserInputError(f"{name}: {err}; {family.allowed}") from None
    raise UserInputError(f"unknown model {name!r}: {_closest(name)}")


def _check_options(info: ModelInfo, options: dict) -> None:
    params = inspect.signature(info.factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserInputError(
            f"unknown option(s) {', '.join(unknown)} for model {info.name!r}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )


def create_model(name: str, **options) -> nn.Module:
    """Build a model by name with keyword options (``shortcut``, ``init``, ``num_classes``...).

    ``torchvision:NAME``, ``hf:MODEL_TYPE`` and ``path/to/file.py:factory`` build external
    models (see ``external``); ``sources.model_source`` adds their example inputs and loss.
    """
    if ":" in name:
        from .external import create_external

        return create_external(name, **options)
    if name.endswith(".py"):
        from .external import missing_factory_error

        raise missing_factory_error(name)
    info = get_model_info(name)
    _check_options(info, options)
    return info.factory(**options)
