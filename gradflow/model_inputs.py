"""What each analysed model is fed: its probe batch, targets and loss, checked before any work.

``gradflow analyze`` takes any model (zoo names, ``torchvision:NAME``, ``hf:TYPE``,
``file.py:factory``, ``nn.Module`` objects). ``probe_for`` builds it and decides its batch, in
this order (the first that applies):

1. the model file's ``example_inputs(batch_size, seed)`` (``gradflow.models.sources``);
2. ``--vocab-size V`` (and ``--seq-len T``): token ids (B, T) in [0, V) -- a dict
   ``input_ids``/``attention_mask`` for ``hf:`` models, a tensor otherwise;
3. ``--input-shape``: a shape C,H,W is a batch of images of the data set (``--data``;
   synthetic images are generated at that size), any other shape a standard-normal batch;
4. an ``hf:`` model's token ids of its vocabulary, of length ``--seq-len`` (default 32);
5. images of the data set at the model's input size (the registry's: 3x224x224 for the
   ImageNet nets; the data set's own size for user models and for real data).

Targets: the ones ``example_inputs`` returns, else made to fit the output and the loss
(the data set's labels for its images, random classes for class logits, Gaussian targets
for ``--loss mse``, the token ids for ``lm``). Loss: ``--loss`` if not ``auto``, else the
file's ``loss``, else the source's (causal LM for HF), else ``gradflow.losses.default_loss``;
without targets the probe loss is ``sum_output`` (and the meta says so).

Before anything is measured, one forward of a private copy runs on the batch, the first
layer is checked against the inputs (a ``Linear`` fed images is an error, not a broadcast
along the image width), and the loss is evaluated once; every failure is a one-line
``UserInputError`` naming the flag to pass.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ParameterError, UserInputError
from .inputs import (
    Inputs,
    batch_size,
    call_model,
    check_inputs,
    describe,
    first_float_tensor,
    select_samples,
)
from .losses import LOSSES, logits_of, resolve_loss, sum_output

INPUT_FLAGS = (
    "pass --input-shape C,H,W (images) or D (vectors), --vocab-size V --seq-len T (tokens), "
    "or define example_inputs(batch_size, seed) beside the factory"
)
DEFAULT_SEQ_LEN = 32


@dataclass
class Probe:
    """One model with its probe batch: inputs, targets, loss and how they were chosen."""

    label: str
    model: nn.Module
    inputs: Inputs
    targets: Any
    loss_fn: Any  # a callable (output, targets) -> scalar, or None: the recorder's default
    kind: str  # images | tensor | tokens | example_inputs
    loss_name: str
    notes: list[str] = field(default_factory=list)

    def meta(self) -> dict:
        """What meta.json says about this model's batch (shape, kind, loss, Jacobian input)."""
        token = first_float_tensor(self.inputs) is None
        return {
            "inputs": describe(self.inputs),
            "kind": self.kind,
            "input_size": input_size_text(self.inputs),
            "loss": self.loss_name,
            "jacobians_from": (
                "the first block's input (embedding output): the inputs hold no float tensor"
                if token
                else "the model input (first float tensor)"
            ),
            "notes": self.notes,
        }


def input_size_text(inputs: Inputs) -> str:
    """The per-sample size of the first tensor, e.g. ``3x224x224`` (``x`` joined, no batch)."""
    first = next(iter(t for t in _tensors(inputs) if t.dim() >= 1), None)
    return "x".join(map(str, first.shape[1:])) if first is not None else ""


def _tensors(inputs: Inputs) -> list[Tensor]:
    from .inputs import tensors

    return tensors(inputs)


def parse_shape(text: str | tuple[int, ...] | None) -> tuple[int, ...] | None:
    """--input-shape: positive integers separated by commas (3,224,224 or 32), or a tuple."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        text = ",".join(map(str, text))
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise ParameterError(
            "input_shape", f"input_shape {text!r}: give positive sizes like 3,224,224 or 32"
        )
    return shape


def parse_model_options(text: str | None) -> dict[str, Any]:
    """--model-options: ``key=value,key=value``; values read as Python literals, else strings."""
    options: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(
                "model_options", f"model_options {text!r}: use key=value,key=value"
            )
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return options


def is_zoo_name(spec: Any) -> bool:
    """True for a registry name (not an nn.Module, ``source:NAME`` or a file)."""
    return isinstance(spec, str) and ":" not in spec and not spec.endswith(".py")


# ----------------------------------------------------------------------------- batches


def synthetic_images(shape: tuple[int, ...], count: int, seed: int):
    """A synthetic image set of ``count`` images of ``shape`` (C,H,W), normalised with its own
    per-channel statistics (rendering the 10,000-image default split at 224x224 would cost
    1.5 GB)."""
    from .data.datasets import DESCRIPTIONS, ImageDataset, _statistics
    from .data.synthetic import synthetic_images as render

    channels, height, width = shape
    if height != width:
        raise ParameterError("input_shape", "synthetic images are square: give C,S,S")
    raw, labels = render(count, image_size=height, channels=channels, num_classes=10, seed=seed)
    mean, std = _statistics(raw)
    description = DESCRIPTIONS["synthetic"] + f", {channels}x{height}x{width}"
    return ImageDataset(raw, labels, 10, "synthetic", "train", mean, std, description, True)


def image_batch(dataset, shape: tuple[int, ...] | None, config) -> tuple[Tensor, Tensor, str]:
    """Images (and labels) of ``shape`` from the data set: the shared batch at its own size,
    synthetic images rendered at another size, else an error naming --input-shape."""
    own = (dataset.channels, dataset.image_size, dataset.image_size)
    if shape is None or tuple(shape) == own:
        x, y = dataset.batch(config.batch_size, seed=config.seed)
        return x, y, f"{dataset.name} images {'x'.join(map(str, own))}"
    if not dataset.is_synthetic:
        raise ParameterError(
            "input_shape",
            f"{dataset.name} images are {'x'.join(map(str, own))}, not "
            f"{'x'.join(map(str, shape))}: pass --input-shape {','.join(map(str, own))} "
            "or use --data synthetic",
        )
    count = max(10 * -(-config.batch_size // 10), 20)
    images = synthetic_images(tuple(shape), count, config.seed)
    x, y = images.batch(config.batch_size, seed=config.seed)
    return x, y, f"synthetic images {'x'.join(map(str, shape))}"


def token_batch(vocab: int, seq_len: int, config, as_dict: bool) -> tuple[Inputs, Tensor]:
    """Seeded token ids (B, T) in [0, vocab): a dict for HF models, else a tensor; and the ids."""
    generator = torch.Generator().manual_seed(config.seed)
    ids = torch.randint(0, vocab, (config.batch_size, seq_len), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)} if as_dict else ids
    return inputs, ids


def no_cache(inputs: Inputs) -> Inputs:
    """HF keyword inputs with ``use_cache=False``: a key/value cache captured in one call would
    grow with every later call of a block (the spectra call each block many times)."""
    return {**inputs, "use_cache": False} if isinstance(inputs, dict) else inputs


def gaussian_batch(shape: tuple[int, ...], config) -> Tensor:
    """A seeded standard-normal batch (B, *shape)."""
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randn((config.batch_size, *shape), generator=generator)


class OnDemand:
    """The measurement data set, loaded on first use (token and vector models need none)."""

    def __init__(self, load) -> None:
        self._load, self.value = load, None

    def get(self):
        if self.value is None:
            self.value = self._load()
        return self.value


# ------------------------------------------------------------------------------ models


def build_source(spec: str, config, data: OnDemand, device: torch.device):
    """(model, ModelSource or None): zoo names as ``analyze`` always built them (data set's
    classes and channels, ``--init``, ``--checkpoint``), other specs via ``model_source``."""
    from .checkpoint import load_weights
    from .models.build import build_model
    from .models.sources import model_source

    options = parse_model_options(config.model_options)
    if is_zoo_name(spec):
        dataset = data.get()
        base = {"num_classes": dataset.num_classes, "in_channels": dataset.channels}
        model = build_model(spec, options={**base, "init": config.init, **options},
                            seed=config.seed, device=device)  # fmt: skip
        if config.checkpoint:
            load_weights(model, config.checkpoint, spec)
        return model, None
    torch.manual_seed(config.seed)
    source = model_source(spec, **options)
    return source.model.to(device), source


def zoo_input_size(spec: Any) -> tuple[int, ...] | None:
    """The registry's input size of a zoo name (3x32x32 CIFAR, 3x224x224 ImageNet)."""
    if not is_zoo_name(spec):
        return None
    from .models.registry import get_model_info

    return tuple(get_model_info(spec).input_size)


def choose_inputs(spec, source, config, data: OnDemand) -> tuple[Inputs, Any, str, str]:
    """(inputs, targets or None, kind, description) by the order of the module docstring."""
    shape = parse_shape(config.input_shape)
    hf = isinstance(spec, str) and spec.startswith("hf:")
    own = source is not None and source.example_inputs is not None
    if own and not hf:  # the model file's own inputs win over the run's flags
        inputs, targets = source.batch(config.batch_size, config.seed)
        return inputs, targets, "example_inputs", f"example_inputs {describe(inputs)}"
    if config.vocab_size:
        vocab = config.vocab_size
        limit = getattr(getattr(source, "model", None), "config", None)
        if hf and vocab > getattr(limit, "vocab_size", vocab):
            raise ParameterError(
                "vocab_size", f"vocab_size {vocab} exceeds {spec}'s vocabulary "
                f"{limit.vocab_size}: pass --model-options vocab_size={vocab} or a smaller one",
            )  # fmt: skip
        inputs, ids = token_batch(vocab, config.seq_len or DEFAULT_SEQ_LEN, config, hf)
        inputs = no_cache(inputs) if hf else inputs
        return inputs, ids, "tokens", f"token ids {list(ids.shape)} in [0, {vocab})"
    if shape is not None:
        if len(shape) == 3:
            x, y, text = image_batch(data.get(), shape, config)
            return x, y, "images", text
        x = gaussian_batch(shape, config)
        return x, None, "tensor", f"standard-normal tensor {describe(x)}"
    if own:  # hf: token ids of the config's vocabulary, of length --seq-len
        if config.seq_len:
            from dataclasses import replace

            tokens = replace(source.example_inputs, seq_len=config.seq_len)
            source = replace(source, example_inputs=tokens)
        inputs, targets = source.batch(config.batch_size, config.seed)
        return no_cache(inputs), targets, "tokens", f"token ids {describe(inputs)}"
    size = zoo_input_size(spec) or (source.input_size if source is not None else None)
    dataset = data.get()
    x, y, text = image_batch(dataset, size if size and dataset.is_synthetic else None, config)
    return x, y, "images", text


def first_layer_check(model: nn.Module, inputs: Inputs, label: str) -> None:
    """Refuse a first parametrised layer ``Linear`` fed images (>= 4-d): torch would apply it
    along the last axis (the image width) instead of failing. Looks at two samples (a shape
    question: a large batch would cost one more full forward)."""
    first: list[tuple[nn.Module, Any]] = []

    def hook(module, args):
        if not first and any(True for _ in module.parameters(recurse=False)):
            first.append((module, args[0] if args else None))

    from .private import private_copy

    twin = private_copy(model)
    handles = [m.register_forward_pre_hook(hook) for m in twin.modules()]
    try:
        with torch.no_grad():
            call_model(twin, select_samples(inputs, slice(0, min(2, batch_size(inputs)))))
    finally:
        for handle in handles:
            handle.remove()
    if not first or not isinstance(first[0][0], nn.Linear):
        return
    layer, given = first[0]
    if isinstance(given, Tensor) and given.dim() >= 4:
        full = [batch_size(inputs), *given.shape[1:]]  # the layer saw two of the samples
        batch_text = f"{str(given.dtype).replace('torch.', '')}{full}"
        raise UserInputError(
            f"{label}: its first layer Linear({layer.in_features}, {layer.out_features}) would "
            f"be applied along the last axis of the images {batch_text}: pass "
            f"--input-shape {layer.in_features} (a vector per sample) or inputs of the shape "
            "the model expects"
        )


def make_targets(output: Any, inputs: Inputs, labels: Tensor | None, loss: str, seed: int):
    """Targets that fit the output for this loss (see the module doc); None for sum_output."""
    if loss == "sum_output":
        return None
    logits = logits_of(output)
    generator = torch.Generator().manual_seed(seed)
    if loss == "mse":
        return torch.randn(logits.shape, generator=generator, dtype=logits.dtype)
    if loss == "lm":
        return labels
    fits = labels is not None and logits.dim() >= 2 and labels.shape == logits.shape[:1]
    if fits and labels.max() < logits.shape[1]:
        return labels
    if logits.dim() < 2:
        return None
    shape = logits.shape[:1] + logits.shape[2:]
    return torch.randint(0, logits.shape[1], shape, generator=generator)


def _one_line(err: BaseException) -> str:
    from .models.external import one_line

    return one_line(err)


def choose_loss(source, config, output: Any, inputs: Inputs, labels: Any, kind: str):
    """(loss name, loss callable or None, targets): --loss, the file's, the source's, auto."""
    name = config.loss or "auto"
    if name == "auto" and source is not None and source.loss_fn is not None:
        label = getattr(source.loss_fn, "__name__", "loss")
        return f"{label} (from {source.description})", source.loss_fn, labels
    tokens = first_float_tensor(inputs) is None  # a token model: (B, T, V) logits are an LM's
    if name == "auto" and tokens and isinstance(labels, Tensor) and not labels.is_floating_point():
        logits = logits_of(output)
        if logits.dim() == 3 and tuple(logits.shape[:2]) == tuple(labels.shape):
            name = "lm"
    targets = labels if kind == "example_inputs" else None
    if targets is None:
        targets = make_targets(output, inputs, labels, name, config.seed)
    if name == "auto" and targets is None:
        return "sum_output (no targets)", sum_output, None
    return f"{name} on {target_origin(targets, labels, kind)}", resolve(name), targets


def resolve(name: str):
    """The loss callable of a --loss name (None for auto: the recorder's default_loss)."""
    return None if name == "auto" else resolve_loss(name)


def target_origin(targets: Any, labels: Any, kind: str) -> str:
    """Where the targets came from, in words (for meta.json and the summary)."""
    if targets is None:
        return "no targets"
    if targets is labels:
        named = {"images": "the data set's labels", "tokens": "the token ids"}
        return named.get(kind, "the targets of example_inputs")
    return "random targets (shaped like the output)"


def check_loss(label: str, loss_fn, output: Any, targets: Any, loss_name: str) -> None:
    """Evaluate the loss once on the checked output: a scalar, or a one-line error."""
    from .losses import default_loss

    try:
        value = (loss_fn or default_loss)(output, targets)
    except UserInputError as err:
        raise UserInputError(f"{label}: {err} (or pass --loss {'|'.join(LOSSES)})") from None
    except Exception as err:  # the user's loss or a mismatched built-in one
        raise UserInputError(
            f"{label}: the loss {loss_name} fails on the output: {_one_line(err)}; pass "
            f"--loss {'|'.join(LOSSES)} or define loss(output, targets) in the model file"
        ) from None
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise UserInputError(
            f"{label}: the loss {loss_name} returned {type(value).__name__}"
            f"{list(value.shape) if isinstance(value, Tensor) else ''}, not a scalar tensor"
        )


def probe_for(label: str, spec: Any, config, data: OnDemand, device: torch.device) -> Probe:
    """The model ``spec`` with its checked probe batch (module doc); UserInputError if not."""
    if isinstance(spec, nn.Module):
        model, source = spec, None
    else:
        model, source = build_source(spec, config, data, device)
    inputs, labels, kind, text = choose_inputs(spec, source, config, data)
    from .inputs import to_device

    inputs = to_device(inputs, device)
    labels = labels.to(device) if isinstance(labels, Tensor) else labels
    try:
        output = check_inputs(model, inputs, label)
    except UserInputError as err:
        hint = "fix example_inputs in the model file" if kind == "example_inputs" else INPUT_FLAGS
        raise UserInputError(f"{str(err).split('. Pass')[0]}; {hint}") from None
    first_layer_check(model, inputs, label)
    loss_name, loss_fn, targets = choose_loss(source, config, output, inputs, labels, kind)
    check_loss(label, loss_fn, output, targets, loss_name)
    batch_size(inputs)
    return Probe(label, model, inputs, targets, loss_fn, kind, loss_name, [text])


def input_lines(meta: dict) -> list[str]:
    """One sentence per model on what it was fed (meta.json's ``inputs``): summary, report."""
    lines = []
    for label, about in (meta.get("inputs") or {}).items():
        size = f" (input size {about['input_size']})" if about.get("input_size") else ""
        lines.append(
            f"{label} inputs: {'; '.join(about.get('notes') or [about['inputs']])}{size}, "
            f"batch {about['inputs']}; loss {about['loss']}; Jacobians from "
            f"{about['jacobians_from']}."
        )
    return lines
