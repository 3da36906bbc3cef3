"""gradflow's private copies of a user model: no user hooks, no grads, math kernels.

Analysis that needs another mode (eval-mode BN, no dropout) or a function transform works on
``private_copy(model)``: a deep copy with every module hook dictionary emptied (forward,
forward-pre, backward, full-backward, with-kwargs variants), so that no user hook fires and
a full-backward hook cannot break ``torch.func``; parameters do not require grad.

``math_kernels()`` runs its body with the reference implementations of the fused kernels
that have no forward-mode AD: the ``nn.MultiheadAttention``/``TransformerEncoderLayer`` fast
path off, scaled-dot-product attention on the MATH backend, and mkldnn (oneDNN RNN kernels)
off. Flags are restored on exit.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from .state import preserved_rng

ROUTE = "math kernels (MHA fast path off, SDPA math backend, mkldnn off)"


def strip_hooks(model: nn.Module) -> nn.Module:
    """Empty every module hook dictionary of ``model`` (a private copy) in place."""
    for module in model.modules():
        for name, value in vars(module).items():
            if "hooks" in name and isinstance(value, dict) and name != "_state_dict_hooks":
                value.clear()
        if getattr(module, "_is_full_backward_hook", None) is not None:
            module._is_full_backward_hook = None
    return model


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the user's hooks and with requires_grad=False."""
    with preserved_rng():
        twin = copy.deepcopy(model)
    strip_hooks(twin)
    twin.requires_grad_(False)
    return twin


@contextlib.contextmanager
def math_kernels(model: nn.Module | None = None) -> Iterator[str]:
    """Fused kernels without forward-mode AD replaced by their math implementations.

    mkldnn is switched off only for a model with RNN modules (or ``model=None``): its
    convolutions are the fast CPU path and have forward-mode AD.
    """
    rnn = model is None or any(isinstance(m, nn.RNNBase) for m in model.modules())
    with contextlib.ExitStack() as stack:
        mha = getattr(torch.backends, "mha", None)
        if mha is not None and hasattr(mha, "set_fastpath_enabled"):
            was = mha.get_fastpath_enabled()
            mha.set_fastpath_enabled(False)
            stack.callback(mha.set_fastpath_enabled, was)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except ImportError:  # older torch: no SDPA backend selection
            pass
        if rnn:
            was_mkldnn = torch._C._get_mkldnn_enabled()  # flags() also warns about TF32
            torch._C._set_mkldnn_enabled(False)
            stack.callback(torch._C._set_mkldnn_enabled, was_mkldnn)
        yield ROUTE if rnn else ROUTE.replace(", mkldnn off", "")
