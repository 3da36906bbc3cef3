"""ModelState: every kind of change is detected and named; restore helpers undo changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradflow.state import ModelState, RNGState, preserved_buffers, preserved_rng


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def test_untouched_model_has_no_differences():
    model = small_model()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    assert ModelState.capture(model).differences(ModelState.capture(model)) == []


def test_nan_parameters_left_alone_are_unchanged():
    model = small_model()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    assert ModelState.capture(model).differences(ModelState.capture(model)) == []


def _bump_parameter(model):
    with torch.no_grad():
        model[0].weight[0, 0] += 0.5


def _move_running_stats(model):
    model.train()
    model(torch.randn(8, 4))


def _set_grad(model):
    model[3].bias.grad = torch.zeros(2)


def _forward_hook(model):
    model[1].register_forward_hook(lambda *args: None)


def _backward_hook(model):
    model[0].register_full_backward_hook(lambda *args: None)


def _tensor_hook(model):
    model[3].weight.register_hook(lambda grad: grad)


def _global_hook(model):
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    model._test_handle = handle  # removed by the test


CHANGES = [
    (_bump_parameter, "parameter 0.weight changed (max abs diff 0.5)"),
    (_move_running_stats, "buffer 1.running_mean changed"),
    (_move_running_stats, "buffer 1.num_batches_tracked changed (1 elements differ)"),
    (lambda m: m.eval(), "training flag of 1 changed from True to False"),
    (lambda m: m[0].bias.requires_grad_(False), "requires_grad of 0.bias changed"),
    (_set_grad, ".grad of 3.bias was None and is now a tensor"),
    (_forward_hook, "hooks _forward_hooks of module 1 changed"),
    (_backward_hook, "hooks _backward_hooks of module 0 changed"),
    (_backward_hook, "hooks _is_full_backward_hook of module 0 changed"),
    (_tensor_hook, "hooks _backward_hooks of parameter 3.weight changed"),
    (_global_hook, "hooks _global_forward_hooks of global module hooks changed"),
    (lambda m: torch.rand(1), "the global torch RNG state changed"),
]


@pytest.mark.parametrize("change, message", CHANGES)
def test_each_change_is_reported_in_words(change, message):
    model = small_model()
    before = ModelState.capture(model)
    change(model)
    try:
        found = before.differences(ModelState.capture(model))
    finally:
        if hasattr(model, "_test_handle"):
            model._test_handle.remove()
    assert any(line.startswith(message) for line in found), found


def test_grad_value_change_and_removal_are_reported():
    model = small_model()
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    before = ModelState.capture(model)
    model[0].weight.grad[1, 2] = 3.0
    assert before.differences(ModelState.capture(model)) == [
        ".grad of 0.weight changed (max abs diff 3)"
    ]
    model[0].weight.grad = None
    assert before.differences(ModelState.capture(model)) == [
        ".grad of 0.weight was a tensor and is now None"
    ]


def test_restore_undoes_values_flags_and_grads():
    model = small_model()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = ModelState.capture(model)
    _bump_parameter(model)
    _move_running_stats(model)
    model.eval()
    model[0].weight.grad = None
    model[3].bias.grad = torch.ones(2)
    model[0].bias.requires_grad_(False)
    torch.rand(3)
    before.restore(model)
    assert before.differences(ModelState.capture(model)) == []


def test_preserved_buffers_restores_in_place_also_on_error():
    model = small_model().train()
    running_mean = model[1].running_mean
    before = ModelState.capture(model, rng=False)
    with pytest.raises(RuntimeError, match="boom"), preserved_buffers(model):
        model(torch.randn(8, 4) + 3)
        model[1].running_var = torch.zeros(6)  # a body that even replaces a buffer
        raise RuntimeError("boom")
    assert before.differences(ModelState.capture(model, rng=False)) == []
    assert model[1].running_mean is running_mean  # same tensor object, values restored


def test_preserved_rng_restores_also_on_error():
    state = RNGState.capture()
    with pytest.raises(KeyError), preserved_rng():
        torch.randn(10)
        raise KeyError
    assert RNGState.capture() == state
    expected = torch.randn(3)
    state.restore()
    assert torch.equal(torch.randn(3), expected)
