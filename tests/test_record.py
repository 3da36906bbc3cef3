"""Recorder / record: schema, exact values on small models, zoo layout, reuse, in-place ops.

Tolerances: values are float32 reductions computed in a different order than the reference
(var_mean vs std, one fused norm vs a per-tensor one), so they agree to ~1e-6 relative;
rtol=1e-5 leaves room for summation order over up to ~1e5 elements.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.record import FRAME_COLUMNS, QUANTITIES, Recorder, to_wide
from gradflow.record_pass import record

RTOL = 1e-5


def approx(expected, rel=RTOL, abs=None):
    """pytest.approx of a float or a 0-d tensor."""
    return pytest.approx(float(expected), rel=rel, abs=abs)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def values(frame: pd.DataFrame, quantity: str) -> pd.Series:
    rows = frame[frame.quantity == quantity]
    return pd.Series(rows.value.to_numpy(), index=rows.layer.to_numpy())


def test_frame_schema_and_dtypes():
    model = mlp()
    frame = record(model, torch.randn(6, 5), torch.randint(0, 3, (6,)), label="tiny")
    assert tuple(frame.columns) == FRAME_COLUMNS
    residual_only = {"branch_variance", "shortcut_grad_norm", "branch_grad_norm"}
    residual_only.add("shortcut_grad_share")  # the MLP has no residual block
    assert set(frame.quantity) == set(QUANTITIES) - {"update_ratio"} - residual_only
    assert (frame.model == "tiny").all() and (frame.step == 0).all()
    assert frame.stage.dtype == "Int64" and frame.block.dtype == "Int64"
    assert frame.value.dtype == np.float64 and frame.depth.dtype == np.int64
    # a Sequential of Linear/BN/ReLU/Linear: its four children are the (plain) blocks, stage 1
    inside = frame[frame.layer != "stem"]  # the stem boundary lies outside every block
    assert set(inside.kind) == {"plain"} and (inside.stage == 1).all()
    assert set(frame[frame.layer == "stem"].kind) == {"other"}
    assert Recorder(model).frame(wide=True).empty
    wide = to_wide(frame)
    # one row per layer and site: layer "1" is a response layer (depth 1) and a boundary
    assert len(wide) == len(frame[["layer", "depth"]].drop_duplicates()) == 12
    assert {"response_std", "param_grad_norm", "activation_grad_norm"} <= set(wide.columns)


def test_values_equal_hand_computed_ones_on_a_small_model():
    model = mlp().train()
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    frame = record(model, x, y)

    twin = copy.deepcopy(model)
    z0 = x.clone().requires_grad_(True)
    z1 = twin[0](z0)
    z2 = twin[1](z1)
    z3 = twin[2](z2)
    z4 = twin[3](z3)
    for z in (z1, z2, z3, z4):
        z.retain_grad()
    F.cross_entropy(z4, y).backward()

    response = z2.detach()
    assert values(frame, "response_std")["1"] == approx(response.std(correction=0), RTOL)
    assert values(frame, "response_mean")["1"] == approx(response.mean(), abs=1e-6)
    assert values(frame, "response_absmax")["1"] == approx(response.abs().max(), RTOL)
    grads = values(frame, "activation_grad_norm")
    expected = {"stem": z0.grad, "0": z1.grad, "1": z2.grad, "2": z3.grad, "3": z4.grad}
    assert list(grads.index) == list(expected)
    for layer, grad in expected.items():
        assert grads[layer] == approx(grad.norm(), rel=RTOL)
        # mean-reduced loss: sample i's own gradient is B dL/dz_i; RMS over the 7 samples
        per_sample = (7 * grad).flatten(1).norm(dim=1)
        assert values(frame, "activation_grad_rms")[layer] == approx(
            per_sample.pow(2).mean().sqrt(), rel=RTOL
        )
    for name, param in twin.named_parameters():
        assert values(frame, "param_grad_norm")[name] == approx(param.grad.norm(), RTOL)
        assert values(frame, "weight_norm")[name] == approx(param.detach().norm(), RTOL)
    boundary = frame[frame.quantity == "activation_grad_norm"]
    assert list(boundary.depth) == [0, 1, 2, 3, 4]
    params = frame[frame.quantity == "weight_norm"].set_index("layer").depth
    assert params.to_dict() == {"0.weight": 1, "0.bias": 1, "1.weight": 2, "1.bias": 2} | {
        "3.weight": 3,
        "3.bias": 3,
    }


def test_zoo_model_layout_and_block_boundary_gradients():
    model = gf.create_model("resnet20")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    frame = record(model, x, y, label="resnet20")

    responses = frame[frame.quantity == "response_std"]
    assert list(responses.layer) == model.response_layers()
    assert list(responses.depth) == list(range(1, 20))
    row = responses.set_index("layer").loc["stage2.block3.bn1"]
    assert (row.stage, row.block, row.kind) == (2, 3, "residual")

    twin = copy.deepcopy(model)
    z = twin.forward_stem(x)
    points = [z]
    for block in twin.blocks():
        z = block(z)
        points.append(z)
    for point in points:
        point.retain_grad()
    F.cross_entropy(twin.forward_head(z), y).backward()
    boundary = frame[frame.quantity == "activation_grad_norm"]
    assert list(boundary.layer) == ["stem"] + [path for path, _ in model.named_blocks()]
    assert list(boundary.depth) == list(range(10))
    expected = [float(p.grad.norm()) for p in points]
    np.testing.assert_allclose(boundary.value.to_numpy(), expected, rtol=RTOL)
    assert (
        boundary.stage.isna().iloc[0]
        and list(boundary.stage.iloc[1:]) == [1] * 3 + [2] * 3 + [3] * 3
    )


def test_plain_model_blocks_are_kind_plain():
    frame = record(gf.create_model("plain20"), torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    inside = frame[frame.layer.str.startswith("stage")]
    assert set(inside.kind) == {"plain"} and not inside.empty
    assert set(frame[frame.layer.str.startswith(("stem", "fc"))].kind) == {"other"}


def test_streaming_merge_equals_statistics_of_concatenated_batches():
    model = mlp().train()
    seen = []
    handle = model[1].register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    batches = [torch.randn(n, 5) * 3 + 100 for n in (3, 8, 5)]  # offset: tests stability
    grads = []
    with Recorder(model, ["response_std", "response_mean", "activation_grad_norm"]) as rec:
        for x in batches:
            out = model(x)
            out.register_hook(lambda g: grads.append(g.clone()))
            out.pow(2).mean().backward()
        rec.step()
    handle.remove()
    frame = rec.frame()
    outputs = torch.cat(seen).double()
    assert values(frame, "response_std")["1"] == approx(outputs.std(correction=0), RTOL)
    assert values(frame, "response_mean")["1"] == approx(outputs.mean(), abs=1e-6)
    # gradient norms over a step: sqrt of the sum of squares over its batches
    expected = torch.stack([g.double().pow(2).sum() for g in grads]).sum().sqrt()
    assert values(frame, "activation_grad_norm")["3"] == approx(expected, RTOL)
    assert (frame.step == 0).all()


def test_training_loop_steps_update_ratio_and_grad_norms():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with Recorder(model, ["param_grad_norm", "update_ratio"], label="mlp") as rec:
        for _ in range(3):
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            optimizer.zero_grad()
            F.cross_entropy(model(torch.randn(4, 5)), torch.randint(0, 3, (4,))).backward()
            optimizer.step()
            seen.append(
                {
                    n: (p.grad.norm().item(), ((p - before[n]).norm() / before[n].norm()).item())
                    for n, p in model.named_parameters()
                }
            )
            rec.step()
    frame = rec.frame()
    assert sorted(set(frame.step)) == [0, 1, 2]
    for step, expected in enumerate(seen):
        at = frame[frame.step == step]
        for name, (grad_norm, ratio) in expected.items():
            assert values(at, "param_grad_norm")[name] == approx(grad_norm, RTOL)
            if np.isfinite(ratio):
                assert values(at, "update_ratio")[name] == approx(ratio, 1e-4)
            else:  # ||w_{t-1}|| = 0 (a BN bias at init): undefined, reported as NaN
                assert np.isnan(values(at, "update_ratio")[name])


def test_layers_override_by_pattern_and_type():
    model = gf.create_model("resnet20")
    x = torch.randn(2, 3, 32, 32)
    by_glob = record(model, x, probes=["response_std"], layers="stage3.*.conv?")
    assert list(by_glob.layer) == [f"stage3.block{i}.conv{j}" for i in (1, 2, 3) for j in (1, 2)]
    by_type = record(model, x, probes=["response_std"], layers=[nn.Linear])
    assert list(by_type.layer) == ["fc"]
    with pytest.raises(UserInputError, match="did you mean"):
        Recorder(model, layers="stage2.block1.bn3")


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = (
            nn.Linear(width, width),
            nn.LayerNorm(width),
            nn.Linear(width, width),
        )

    def forward(self, x):
        return x + self.fc2(torch.relu(self.norm(self.fc1(x))))


class ResidualMLP(nn.Module):
    def __init__(self, width: int = 12, depth: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(6, width)
        self.blocks = nn.ModuleList(Residual(width) for _ in range(depth))
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        z = self.inp(x)
        for block in self.blocks:
            z = block(z)
        return self.out(z)


def test_user_model_with_residual_mlp_blocks():
    model = ResidualMLP()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    frame = record(model, x, y, label="mlp")
    twin = copy.deepcopy(model)
    z = twin.inp(x)
    points = [z]
    for block in twin.blocks:
        z = block(z)
        points.append(z)
    for point in points:
        point.retain_grad()
    F.cross_entropy(twin.out(z), y).backward()
    boundary = frame[frame.quantity == "activation_grad_norm"]
    assert list(boundary.layer) == ["stem"] + [f"blocks.{i}" for i in range(4)]
    assert list(boundary.depth) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(boundary.value, [float(p.grad.norm()) for p in points], rtol=RTOL)
    responses = frame[frame.quantity == "response_std"]
    assert list(responses.layer) == [f"blocks.{i}.norm" for i in range(4)]


class Reuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)))


def test_reused_module_is_reported_once_per_call():
    model = Reuse()
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    frame = record(model, x, y)
    responses = frame[frame.quantity == "response_std"]
    assert list(responses.layer) == ["block.1", "block.1@2"] and list(responses.depth) == [1, 2]
    twin = copy.deepcopy(model)
    first = twin.block(x)
    second = twin.block(first)
    expected = [first.std(correction=0).item(), second.std(correction=0).item()]
    np.testing.assert_allclose(responses.value, expected, rtol=RTOL)
    boundary = frame[frame.quantity == "activation_grad_norm"]
    # no repeating container: the model's children are the blocks (block runs twice)
    assert list(boundary.layer) == ["stem", "block", "block@2", "head"]
    assert list(boundary.depth) == [0, 1, 2, 3]


def test_inplace_relu_gradients_are_of_the_values_each_layer_produced():
    inplace = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    frame = record(inplace, x, y)
    pre = inplace[0](x)
    post = torch.relu(pre)
    pre.retain_grad()
    post.retain_grad()
    F.cross_entropy(inplace[2](post), y).backward()
    grads = values(frame, "activation_grad_norm")
    assert grads["0"] == approx(pre.grad.norm(), RTOL)  # before the in-place ReLU
    assert grads["1"] == approx(post.grad.norm(), RTOL)


def test_forward_only_under_no_grad():
    model = gf.create_model("resnet20")
    with torch.no_grad(), Recorder(model, label="r") as rec:
        model(torch.randn(2, 3, 32, 32))
        rec.step()
    frame = rec.frame()
    assert set(frame.quantity) == {
        "response_std",
        "response_mean",
        "response_absmax",
        "weight_norm",
        "update_ratio",
        "channel_mean_sq",  # forward signal propagation needs no gradient
        "channel_variance",
    }
    # no optimiser step: nothing moved; NaN (undefined) exactly where ||w|| = 0 (BN biases)
    ratio, weight = values(frame, "update_ratio"), values(frame, "weight_norm")
    assert (ratio[weight > 0] == 0).all() and ratio[weight == 0].isna().all()
    assert set(record(model, torch.randn(2, 3, 32, 32)).quantity) == {
        "response_std",
        "response_mean",
        "response_absmax",
        "weight_norm",
        "channel_mean_sq",
        "channel_variance",
        "branch_variance",
    }


def test_default_loss_choices_and_errors():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    target = torch.randn(4, 2)
    frame = record(model, x, target, probes=["param_grad_norm"])
    twin = copy.deepcopy(model)
    F.mse_loss(twin(x), target).backward()
    assert values(frame, "param_grad_norm")["weight"] == approx(twin.weight.grad.norm())
    with pytest.raises(UserInputError, match="pass loss_fn"):
        record(model, x, torch.randn(4))
    with pytest.raises(UserInputError, match="scalar"):
        record(model, x, target, loss_fn=lambda out, t: out - t)
    custom = record(model, x, target, loss_fn=lambda out, t: (out - t).abs().sum())
    assert not custom.empty


def test_clean_exit_closes_a_pending_step():
    model = mlp()
    with Recorder(model, ["response_std", "param_grad_norm"]) as rec:
        F.cross_entropy(model(torch.randn(4, 5)), torch.randint(0, 3, (4,))).backward()
    frame = rec.frame()
    assert rec.steps_done == 1 and (frame.step == 0).all()
    assert set(frame.quantity) == {"response_std", "param_grad_norm"}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["plain56", "resnet56"])
def test_56_layer_nets_have_55_responses_and_28_boundary_points(name):
    model = gf.create_model(name)
    frame = record(model, torch.randn(2, 3, 32, 32), torch.tensor([3, 4]), label=name)
    responses = frame[frame.quantity == "response_std"]
    assert list(responses.depth) == list(range(1, 56))  # stem.bn + 2 per block x 27 blocks
    boundary = frame[frame.quantity == "activation_grad_norm"]
    assert list(boundary.depth) == list(range(28)) and boundary.value.gt(0).all()
    kind = "residual" if name.startswith("resnet") else "plain"
    assert set(boundary.kind.iloc[1:]) == {kind}


def test_layers_also_name_the_gradient_points_unless_boundaries_do():
    model = gf.create_model("resnet20")
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    frame = record(model, x, y, probes=["activation_grad_norm"], layers="stage3.block?")
    assert list(frame[frame.quantity == "activation_grad_norm"].layer) == [
        "stem",
        "stage3.block1",
        "stage3.block2",
        "stage3.block3",
    ]
    frame = record(
        model,
        x,
        y,
        probes=["response_std", "activation_grad_norm"],
        layers="fc",
        boundaries="stage1.block?",
    )
    assert list(frame[frame.quantity == "response_std"].layer) == ["fc"]
    assert set(frame[frame.quantity == "activation_grad_norm"].layer) == {
        "stem",
        "stage1.block1",
        "stage1.block2",
        "stage1.block3",
    }
