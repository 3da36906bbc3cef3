"""Signal propagation plots (Brock, De and Smith 2021) and the shortcut/branch gradient split.

Forward, at every block boundary z_k (k = 0: the input of the first block, k: the output of
block k), with statistics per channel c over the batch and all positions:

- ``channel_mean_sq``  = mean_c (mean z_c)^2, the average channel squared mean;
- ``channel_variance`` = mean_c var(z_c), the average channel variance (population);
- ``branch_variance``  = mean_c var(F_k(x)_c) at the end of residual block k's branch.

Backward, at every residual block y = post(u), u = F(x) + S(x) (post = relu for
post-activation blocks, identity for pre-activation blocks), with g_u = dL/du the gradient
at the *pre-activation sum* (for post-activation blocks g_u = dL/dy * 1[u > 0], i.e. after
the ReLU's mask, not the gradient at the block output):

- ``shortcut_grad_norm`` = ||g_u J_S(x)||, what reaches the block input through S;
- ``branch_grad_norm``   = ||g_u J_F(x)||, what reaches it through F;
- ``shortcut_grad_share`` = shortcut / (shortcut + branch) norms, 1 when the branch
  carries nothing (zero-gamma at init), 1/2 when both paths carry the same norm.

Norms are over the whole batch. dL/dx = g_u J_S + g_u J_F, so the two parts add to the
block's input gradient as vectors (their norms need not add).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserInputError
from ..state import preserved_buffers, preserved_rng
from .blocks import BlockSpec, as_batch, block_io, channel_stats, resolve_blocks, split_block

SIGNAL_QUANTITIES = (
    "channel_mean_sq",
    "channel_variance",
    "branch_variance",
    "shortcut_grad_norm",
    "branch_grad_norm",
    "shortcut_grad_share",
)
COLUMNS = ["model", "step", "layer", "depth", "stage", "block", "kind", "quantity", "value"]
STEM = "stem"


def _loss(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for integer targets, MSE for float targets shaped like the output."""
    if not target.is_floating_point():
        return F.cross_entropy(output, target)
    if target.shape == output.shape:
        return F.mse_loss(output, target)
    raise UserInputError(
        f"no default loss for output {tuple(output.shape)} and targets {tuple(target.shape)}: "
        "pass loss_fn=lambda output, targets: <scalar>"
    )


def _row(spec: BlockSpec | None, label: str, step: int, quantity: str, value: float) -> dict:
    if spec is None:
        return dict(model=label, step=step, layer=STEM, depth=0, stage=pd.NA, block=pd.NA,
                    kind="other", quantity=quantity, value=value)  # fmt: skip
    stage = pd.NA if spec.stage is None else spec.stage
    block = pd.NA if spec.index is None else spec.index
    return dict(model=label, step=step, layer=spec.name, depth=spec.depth, stage=stage,
                block=block, kind=spec.kind, quantity=quantity, value=value)  # fmt: skip


def _gradient_split(spec: BlockSpec, x: Tensor, y: Tensor, grad_y: Tensor) -> tuple[float, float]:
    """(||g_u J_S||, ||g_u J_F||) of one residual block at its input x (module docstring)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f, s, post = split_block(spec, x, y.detach())
        u = f + s
        (grad_u,) = torch.autograd.grad(post(u), u, grad_y, retain_graph=True)
        (through_s,) = torch.autograd.grad(s, x, grad_u, retain_graph=True, allow_unused=True)
        (through_f,) = torch.autograd.grad(f, x, grad_u, allow_unused=True)
    norm = lambda g: 0.0 if g is None else float(g.double().norm())  # noqa: E731
    return norm(through_s), norm(through_f)


def _forward_rows(
    spec: BlockSpec, x: Tensor, y: Tensor, channel_dim: int, label: str, step: int
) -> list[dict]:
    """Channel mean^2 and variance at block ``spec``'s output, and its branch variance."""
    mean_sq, variance = channel_stats(y, channel_dim)
    rows = [_row(spec, label, step, "channel_mean_sq", mean_sq),
            _row(spec, label, step, "channel_variance", variance)]  # fmt: skip
    if spec.kind == "residual":
        with torch.no_grad():
            branch, _, _ = split_block(spec, x, y)
        rows.append(
            _row(spec, label, step, "branch_variance", channel_stats(branch, channel_dim)[1])
        )
    return rows


def _backward_rows(
    specs: list[BlockSpec], loss: Tensor, block_in: dict, block_out: dict, label: str, step: int
) -> list[dict]:
    """Shortcut and branch gradient norms and the shortcut's share at every residual block."""
    residual = [s for s in specs if s.kind == "residual"]
    if not residual:
        return []
    rows = []
    grads = torch.autograd.grad(loss, [block_out[s.name] for s in residual])
    for spec, grad_y in zip(residual, grads, strict=True):
        shortcut, branch = _gradient_split(spec, block_in[spec.name], block_out[spec.name], grad_y)
        share = shortcut / (shortcut + branch) if shortcut + branch > 0 else float("nan")
        rows += [_row(spec, label, step, "shortcut_grad_norm", shortcut),
                 _row(spec, label, step, "branch_grad_norm", branch),
                 _row(spec, label, step, "shortcut_grad_share", share)]  # fmt: skip
    return rows


def signal_propagation(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    blocks: object = None,
    label: str | None = None,
    step: int = 0,
    channel_dim: int = 1,
) -> pd.DataFrame:
    """Signal propagation frame of ``model`` on one batch (quantities: module docstring).

    Runs in the model's current mode (train mode: BN with batch statistics, as training
    sees it) and leaves it unchanged: BN running statistics and the RNG are restored, hooks
    removed, ``.grad`` never written. Backward quantities need ``targets`` (or ``loss_fn``);
    without them only the forward ones are measured. ``blocks``: see ``resolve_blocks``.
    """
    x = as_batch(inputs)
    specs = resolve_blocks(model, blocks)
    label = label or type(model).__name__
    backward = targets is not None or loss_fn is not None
    with preserved_rng(), preserved_buffers(model), torch.set_grad_enabled(backward):
        output, block_in, block_out = block_io(model, x, specs)
        first = channel_stats(block_in[specs[0].name], channel_dim)
        rows = [
            _row(None, label, step, q, v) for q, v in zip(SIGNAL_QUANTITIES[:2], first, strict=True)
        ]
        for spec in specs:
            rows += _forward_rows(spec, block_in[spec.name], block_out[spec.name], channel_dim,
                                  label, step)  # fmt: skip
        if backward:
            loss = loss_fn(output, targets) if loss_fn is not None else _loss(output, targets)
            rows += _backward_rows(specs, loss, block_in, block_out, label, step)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"stage": "Int64", "block": "Int64", "depth": int, "value": float})
