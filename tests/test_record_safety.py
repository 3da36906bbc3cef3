"""The Recorder and record() never disturb the model, also on errors; non-finite reporting."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradflow as gf
from gradflow.record import NonFiniteError, Recorder
from gradflow.record_pass import record
from gradflow.state import ModelState, RNGState


def busy_model() -> nn.Module:
    """BN, in-place ReLU, dropout (uses the RNG), an existing .grad, a frozen parameter and a
    user hook: everything a recording could disturb."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )
    model[0].weight.grad = torch.full_like(model[0].weight, 0.25)
    model[5].bias.requires_grad_(False)
    model[1].register_forward_hook(lambda module, args, output: None)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,))


@pytest.mark.parametrize("training", [True, False])
def test_record_leaves_the_model_exactly_as_found(training):
    model = busy_model().train(training)
    x, y = batch()
    before = ModelState.capture(model)  # includes the global RNG state
    frame = record(model, x, y)
    assert before.differences(ModelState.capture(model)) == []
    assert not x.requires_grad and x.grad is None
    # the recording did measure gradients, without touching .grad
    assert {"param_grad_norm", "activation_grad_norm"} <= set(frame.quantity)


def test_record_on_a_zoo_model_keeps_bn_statistics_and_grads_none():
    model = gf.create_model("resnet20").train()
    x, y = torch.randn(4, 3, 32, 32) + 2, torch.randint(0, 10, (4,))
    before = ModelState.capture(model)
    record(model, x, y)
    assert before.differences(ModelState.capture(model)) == []


def test_record_leaves_the_model_alone_when_the_loss_raises():
    model = busy_model()
    x, y = batch()
    before = ModelState.capture(model)

    def broken_loss(output, target):
        raise ValueError("broken loss")

    with pytest.raises(ValueError, match="broken loss"):
        record(model, x, y, loss_fn=broken_loss)
    assert before.differences(ModelState.capture(model)) == []


def test_recorder_adds_nothing_to_the_body_and_removes_hooks_when_it_raises():
    model = busy_model()
    twin = copy.deepcopy(model)
    twin[0].weight.grad = model[0].weight.grad.clone()  # deepcopy does not copy .grad
    x, y = batch()
    torch.manual_seed(3)
    with pytest.raises(RuntimeError, match="inside"), Recorder(model):
        F.cross_entropy(model(x), y).backward()
        raise RuntimeError("inside the with block")
    rng_after_recording = RNGState.capture()
    torch.manual_seed(3)
    F.cross_entropy(twin(x), y).backward()  # the same body, bare
    assert RNGState.capture() == rng_after_recording
    recorded = ModelState.capture(model, rng=False)
    assert recorded.differences(ModelState.capture(twin, rng=False)) == []


def test_graph_backpropagated_after_exit_is_ignored():
    model = busy_model()
    x, y = batch()
    with Recorder(model, ["activation_grad_norm"]) as rec:
        loss = F.cross_entropy(model(x), y)
    loss.backward()  # tensor hooks still on the graph: they must do nothing now
    assert rec.frame().empty  # the exit closed the step that saw the forward pass
    assert rec.steps_done == 1 and not rec._boundary


def test_nonfinite_measurements_warn_naming_layer_and_step():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    with pytest.warns(RuntimeWarning, match=r"non-finite measurements at step 0: .* of 2"):
        frame = record(model, x, y)
    assert frame.value.isna().any()  # kept in the frame
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ignored = record(model, x, y, on_nonfinite="ignore")
    assert np.array_equal(ignored.value.isna(), frame.value.isna())


def test_nonfinite_raise_keeps_the_step_and_removes_hooks():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    before = ModelState.capture(model, rng=False)
    with pytest.raises(NonFiniteError, match=r"at step 1: response_std of 0 = nan"):  # noqa: SIM117
        with Recorder(model, ["response_std"], on_nonfinite="raise") as rec:
            model(torch.randn(2, 3))
            rec.step()
            model(torch.tensor([[1.0, float("inf"), 0.0], [0.0, 1.0, 2.0]]))
            rec.step()
    frame = rec.frame()
    assert sorted(set(frame.step)) == [0, 1] and np.isnan(frame.value.iloc[-1])
    assert before.differences(ModelState.capture(model, rng=False)) == []


def test_nonfinite_input_batch_gets_a_clear_message():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    x[1, 2] = float("nan")
    x[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="input batch x contains 1 NaN and 1 Inf"):
        record(model, x, torch.tensor([0, 1, 0, 1]), on_nonfinite="raise")


def test_bad_options_are_user_errors():
    model = nn.Linear(3, 2)
    with pytest.raises(gf.errors.UserInputError, match="unknown probe 'response_sd'"):
        Recorder(model, ["response_sd"])
    with pytest.raises(gf.errors.UserInputError, match="on_nonfinite"):
        Recorder(model, on_nonfinite="loud")
    with pytest.raises(gf.errors.UserInputError, match="loss_reduction"):
        Recorder(model, loss_reduction="max")


def test_torchvision_resnet18():
    models = pytest.importorskip("torchvision.models")
    model = models.resnet18(num_classes=10).train()
    before = ModelState.capture(model)
    frame = record(model, torch.randn(2, 3, 64, 64), torch.tensor([1, 7]), label="tv18")
    assert before.differences(ModelState.capture(model)) == []
    boundary = frame[frame.quantity == "activation_grad_norm"]
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]
    assert list(boundary.layer) == ["stem", *blocks]
    assert list(boundary.depth) == list(range(9)) and np.isfinite(boundary.value).all()
    responses = frame[frame.quantity == "response_std"]
    assert len(responses) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
