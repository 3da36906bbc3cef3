"""Where a model comes from, with what it eats: ``model_source(spec) -> ModelSource``.

One function for every kind of name: zoo names (``resnet56``), ``torchvision:NAME``,
``hf:MODEL_TYPE`` and ``path/to/file.py:factory``. Beside the model it returns what gradflow
needs to run it: example inputs, a loss, and the input size where one is known.

The model-file contract (both functions optional, looked up beside the factory)::

    def factory(**options) -> nn.Module: ...
    def example_inputs(batch_size: int, seed: int):
        # inputs, or (inputs, targets); inputs: a tensor, a tuple of positional
        # arguments, or a dict of keyword arguments. A returned tuple is always read
        # as (inputs, targets): return ((a, b), None) for two positional inputs.
    def loss(output, targets) -> torch.Tensor:  # a scalar
        ...

Without ``example_inputs`` the caller feeds image batches of ``input_size`` (zoo and
torchvision models) or what the user passes; without ``loss`` the caller's default applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserInputError
from .external import (
    call_factory,
    create_external,
    file_function,
    load_model_file,
    one_line,
    split_file_spec,
)

ExampleInputs = Callable[[int, int], Any]
LossFn = Callable[[Any, Any], Tensor]
TORCHVISION_INPUT = (3, 224, 224)
DEFAULT_SEQUENCE_LENGTH = 32


@dataclass(frozen=True)
class ModelSource:
    """A built model and what its source says about running it (None: not known)."""

    model: nn.Module
    example_inputs: ExampleInputs | None
    loss_fn: LossFn | None
    input_size: tuple[int, ...] | None
    description: str

    def batch(self, batch_size: int, seed: int = 0) -> tuple[Any, Any]:
        """``(inputs, targets)`` from ``example_inputs`` (targets None when it gives none)."""
        if self.example_inputs is None:
            raise UserInputError(
                f"{self.description} gives no example inputs: pass inputs (e.g. an input shape)"
            )
        try:
            made = self.example_inputs(batch_size, seed)
        except UserInputError:
            raise
        except Exception as err:
            where = f"example_inputs of {self.description}"
            raise UserInputError(f"{where} raised {one_line(err)}") from err
        if isinstance(made, tuple) and len(made) != 2:
            raise UserInputError(
                f"example_inputs of {self.description} returned a tuple of {len(made)}: a tuple "
                "is read as (inputs, targets); return ((a, b, ...), targets) for positional inputs"
            )
        inputs, targets = made if isinstance(made, tuple) else (made, None)
        if not isinstance(inputs, Tensor | tuple | dict):
            raise UserInputError(
                f"example_inputs of {self.description} returned {type(inputs).__name__}: "
                "return a tensor, a tuple of positional arguments or a dict of keyword "
                "arguments (or (inputs, targets))"
            )
        return inputs, targets


@dataclass(frozen=True)
class TokenInputs:
    """Random token ids in [0, vocab_size) of shape (batch, seq_len), all attended.

    Returns ``({"input_ids", "attention_mask"}, labels)`` with labels = input_ids, the
    targets of the causal language-model loss (``causal_lm_loss``). Replace ``seq_len``
    with ``dataclasses.replace`` for other lengths.
    """

    vocab_size: int
    seq_len: int = DEFAULT_SEQUENCE_LENGTH

    def __call__(self, batch_size: int, seed: int) -> tuple[dict[str, Tensor], Tensor]:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.vocab_size, (batch_size, self.seq_len), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids


def causal_lm_loss(output: Any, labels: Tensor) -> Tensor:
    """Next-token cross-entropy, mean over tokens (HF's LM loss; labels -100 ignored)."""
    logits = output.logits if hasattr(output, "logits") else output
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    return F.cross_entropy(shifted.float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def _zoo_source(name: str, options: dict) -> ModelSource:
    from .registry import create_model, get_model_info

    info = get_model_info(name)
    return ModelSource(create_model(name, **options), None, None, info.input_size, info.name)


def _hf_source(model_type: str, options: dict) -> ModelSource:
    model = create_external(f"hf:{model_type}", **options)
    config = model.config
    vocab = getattr(config, "vocab_size", None)
    causal = hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None
    limit = getattr(config, "max_position_embeddings", None) or DEFAULT_SEQUENCE_LENGTH
    inputs = TokenInputs(vocab, min(DEFAULT_SEQUENCE_LENGTH, limit)) if vocab else None
    size = getattr(config, "image_size", None)
    channels = getattr(config, "num_channels", None)
    image = (channels, size, size) if isinstance(size, int) and channels and not vocab else None
    return ModelSource(
        model,
        inputs,
        causal_lm_loss if causal and inputs else None,
        image,
        f"hf:{model_type} ({type(model).__name__}, random weights)",
    )


def _file_source(spec: str, options: dict) -> ModelSource:
    path, factory = split_file_spec(spec)
    module = load_model_file(path)
    model = call_factory(file_function(module, path, factory), spec, options)
    hooks = {}
    for name in ("example_inputs", "loss"):
        value = getattr(module, name, None)
        if value is not None and not callable(value):
            raise UserInputError(f"{path}: {name} must be a function (see gradflow.models.sources)")
        hooks[name] = value
    return ModelSource(model, hooks["example_inputs"], hooks["loss"], None, spec)


def model_source(spec: str, **options) -> ModelSource:
    """Build the model named by ``spec`` with ``options`` and say how to feed it.

    Zoo names: ``input_size`` from the registry (3x32x32 CIFAR, 3x224x224 ImageNet), no
    example inputs (image batches) and no loss (cross-entropy). ``hf:TYPE``: token inputs of
    the config's vocabulary (``TokenInputs``), the causal LM loss where the model has an LM
    head; vision types (no vocabulary) give ``input_size`` from the config instead.
    ``file.py:factory``: the file's ``example_inputs`` and ``loss`` if it defines them.
    ``torchvision:NAME``: 3x224x224 images.
    """
    source, _, name = spec.partition(":")
    if source == "hf" and name:
        return _hf_source(name, options)
    if source == "torchvision" and name:
        model = create_external(spec, **options)
        return ModelSource(model, None, None, TORCHVISION_INPUT, spec)
    if ":" in spec or spec.endswith(".py"):
        return _file_source(spec, options)
    return _zoo_source(spec, options)
