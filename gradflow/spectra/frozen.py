"""Eval-mode BatchNorm in gradflow's private copies as the affine map it is.

An eval-mode BatchNorm with running statistics is z -> z * scale + shift per channel, with
scale = weight / sqrt(running_var + eps) and shift = bias - running_mean * scale. Torch's
forward-mode derivative of batch_norm (and of any elementwise product) runs a Python
decomposition costing ~3 ms per call under vmap, about as much as a whole 3x3 convolution of a
CIFAR block; the Jacobian walk pushes every basis vector through every norm. So
``freeze_batch_norms`` folds each norm whose only input is the output of a convolution (used by
nothing else, each module called once: checked on the autograd graph of one forward) into that
convolution's weight and bias, and replaces every other one by ``FrozenNorm``. The same
function to rounding (float64 arithmetic, then the model's dtype); only ever applied to a
private copy, after ``gradflow.structure`` has read it.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor, nn

from ..inputs import Inputs, call_model, first_float_tensor, replace_first_float, tensors

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """(scale, shift) of an eval-mode norm in float64 (module docstring)."""
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var.to(torch.float64) + norm.eps)
        if norm.affine:
            scale = scale * norm.weight.to(torch.float64)
        shift = -norm.running_mean.to(torch.float64) * scale
        if norm.affine:
            shift = shift + norm.bias.to(torch.float64)
    return scale, shift


class FrozenNorm(nn.Module):
    """An eval-mode BatchNorm as z * scale + shift per channel (module docstring)."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        scale, shift = _affine(norm)
        dtype = norm.running_mean.dtype
        self.register_buffer("scale", scale.to(dtype), persistent=False)
        self.register_buffer("shift", shift.to(dtype), persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        view = (-1,) + (1,) * (z.dim() - 2)  # channels on dim 1, as BatchNorm{1,2,3}d
        return z * self.scale.view(view) + self.shift.view(view)


def _frozen_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The eval-mode BatchNorms with running statistics (the ones that are affine maps)."""
    return [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not m.training
        and m.track_running_stats
        and m.running_mean is not None
    ]


def _foldable_pairs(model: nn.Module, inputs: Inputs) -> list[tuple[nn.Module, nn.Module]]:
    """(convolution, norm) pairs where the norm's input is the convolution's output and
    nothing else reads it, each module called once in one forward of ``inputs`` (autograd
    graph of that forward: the convolution's node has one consumer, the norm's node)."""
    norms, calls, seen = _frozen_norms(model), Counter(), {}
    convs = [m for m in model.modules() if type(m) in CONVOLUTIONS]
    start = first_float_tensor(inputs)
    if not norms or not convs or start is None:  # nothing to fold (no forward spent)
        return []

    def remember(module, args, output):
        calls[id(module)] += 1
        seen[id(module)] = (args[0] if args else None, output)

    handles = [m.register_forward_hook(remember) for m in [*convs, *norms]]
    leaf = start.detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            output = call_model(model, replace_first_float(inputs, leaf))
        outputs = tensors(output) if isinstance(output, tuple | dict | Tensor) else []
    finally:
        for handle in handles:
            handle.remove()
    consumers = _consumer_counts([t.grad_fn for t in outputs if t.grad_fn is not None])
    owners = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    by_output = {id(seen[id(c)][1].grad_fn): c for c in convs if calls[id(c)] == 1}
    pairs = []
    for norm in norms:
        if calls[id(norm)] != 1 or not isinstance(seen[id(norm)][0], Tensor):
            continue
        node = seen[id(norm)][0].grad_fn
        conv = by_output.get(id(node)) if node is not None else None
        if conv is not None and consumers[node] == 1 and owners[id(conv.weight)] == 1:
            pairs.append((conv, norm))
    return pairs


def _consumer_counts(roots: list) -> Counter:
    """How many graph edges point at each autograd node reachable from ``roots``."""
    counts, stack, visited = Counter(), list(roots), set()
    while stack:
        node = stack.pop()
        if node in visited:
            continue
        visited.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                counts[child] += 1
                stack.append(child)
    return counts


def _fold(conv: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """conv <- norm(conv(.)): W' = scale W (per output channel), b' = scale b + shift."""
    scale, shift = _affine(norm)
    with torch.no_grad():
        weight = conv.weight.to(torch.float64) * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        bias = shift if conv.bias is None else scale * conv.bias.to(torch.float64) + shift
        conv.weight.copy_(weight.to(conv.weight.dtype))
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def _replace(module: nn.Module, old: dict[int, nn.Module]) -> None:
    for name, child in list(module.named_children()):
        if id(child) in old:
            setattr(module, name, old[id(child)])
        else:
            _replace(child, old)


def freeze_batch_norms(
    model: nn.Module, inputs: Inputs | None = None, *, replace_rest: bool = True
) -> dict[str, int]:
    """Every eval-mode BatchNorm with running statistics of ``model`` (a private copy), in
    place: folded into the convolution feeding it (``inputs`` given: the checks of
    ``_foldable_pairs``), else (``replace_rest``) replaced by its ``FrozenNorm``, whose
    elementwise ops a caller that counts a block's additions must not see. Counts of each."""
    pairs = _foldable_pairs(model, inputs) if inputs is not None else []
    for conv, norm in pairs:
        _fold(conv, norm)
    folded = {id(norm) for _, norm in pairs}
    replacement = {
        id(n): nn.Identity() if id(n) in folded else FrozenNorm(n)
        for n in _frozen_norms(model)
        if id(n) in folded or replace_rest
    }
    _replace(model, replacement)
    return {"folded": len(folded), "frozen": len(replacement) - len(folded)}
