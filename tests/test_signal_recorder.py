"""The Recorder's signal propagation probes against answers known or computed independently."""

from __future__ import annotations

import copy
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradflow as gf
from gradflow.record import Recorder
from gradflow.report import Report, _backward_section, _forward_section

sys.path.insert(0, str(Path(__file__).parent))
import user_models

SIGNAL = ["channel_variance", "branch_variance", "shortcut_grad_share"]


def by_layer(frame: pd.DataFrame, quantity: str) -> pd.Series:
    return frame[frame.quantity == quantity].set_index("layer").value


def dense_channel_stats(z: torch.Tensor, axis: int) -> tuple[float, float]:
    """(mean_c mean_c^2, mean_c var_c) by numpy on the stored tensor, per channel."""
    values = np.moveaxis(z.detach().double().numpy(), axis, 0).reshape(z.shape[axis], -1)
    return float((values.mean(1) ** 2).mean()), float(values.var(1).mean())


def torchvision_resnet(zero_gamma: bool) -> nn.Module:
    torch.manual_seed(0)
    model = user_models.ResNet().train()
    if zero_gamma:
        for block in model.modules():
            if isinstance(block, user_models.BasicBlock):
                nn.init.zeros_(block.bn2.weight)
    return model


def image_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=generator), torch.randint(0, 5, (n,))


@pytest.fixture(scope="module")
def resnet_frames() -> dict[bool, pd.DataFrame]:
    """record() of the torchvision-style ResNet, zero-gamma or not, on one batch (model kept
    unchanged); all default probes, so that the report test sees a real records frame."""
    x, y = image_batch()
    frames = {}
    for zero_gamma in (True, False):
        model = torchvision_resnet(zero_gamma)
        with gf.testing.assert_unchanged(model):
            frames[zero_gamma] = gf.record(model, x, y, label=f"resnet zero_gamma={zero_gamma}")
    return frames


def test_zero_gamma_torchvision_resnet_passes_the_signal_and_the_shortcut_carries_everything(
    resnet_frames,
):
    frame = resnet_frames[True]
    variance, mean_sq = by_layer(frame, "channel_variance"), by_layer(frame, "channel_mean_sq")
    # the stem output is >= 0 (ReLU, max-pool), so relu(x + 0) = x through stage 1 exactly
    for block in ("layer1.0", "layer1.1"):
        assert variance[block] == pytest.approx(variance["stem"], rel=1e-6)
        assert mean_sq[block] == pytest.approx(mean_sq["stem"], rel=1e-6)
    assert variance["stem"] > 0.1 and mean_sq["stem"] > 0.05
    assert (by_layer(frame, "branch_variance") == 0).all()  # bn2 gamma = beta = 0: F = 0
    share = by_layer(frame, "shortcut_grad_share")
    assert list(share.index) == [f"layer{s}.{b}" for s in (1, 2, 3) for b in (0, 1)]
    assert (share == 1).all()  # J_F = 0 exactly, also behind the projection shortcuts
    assert (by_layer(frame, "branch_grad_norm") == 0).all()
    assert (by_layer(frame, "shortcut_grad_norm") > 0).all()
    blocks = frame[frame.quantity.str.startswith("channel_") & (frame.layer != "stem")]
    assert set(blocks.kind) == {"residual"} and len(blocks) == 12


class Projected(nn.Module):
    """y = W2 tanh(W1 x) + P x: a residual block with a projection shortcut, by hand."""

    def __init__(self, width: int, generator: torch.Generator) -> None:
        super().__init__()
        self.fc1, self.fc2 = (nn.Linear(width, width, bias=False) for _ in "12")
        self.proj = nn.Linear(width, width, bias=False)
        for layer in (self.fc1, self.fc2, self.proj):
            layer.weight.data = torch.randn(width, width, generator=generator) / width**0.5

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x))) + self.proj(x)


def test_linear_blocks_with_a_projection_shortcut_give_the_hand_computed_split():
    generator = torch.Generator().manual_seed(4)
    model = nn.Sequential(Projected(5, generator), Projected(5, generator)).double()
    x = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    target = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    frame = gf.record(model, x, target, loss_fn=lambda out, t: (out * t).sum(), probes=SIGNAL)
    measured = frame.set_index(["quantity", "layer"]).value
    # by hand, rows are samples: block k maps z -> tanh(z W1^T) W2^T + z P^T
    w = [[b.fc1.weight.detach(), b.fc2.weight.detach(), b.proj.weight.detach()] for b in model]
    h1 = torch.tanh(x @ w[0][0].T)
    y1 = h1 @ w[0][1].T + x @ w[0][2].T
    h2 = torch.tanh(y1 @ w[1][0].T)
    g2 = target  # dL/dy2 = dL/du2
    g1 = g2 @ w[1][2] + ((g2 @ w[1][1]) * (1 - h2**2)) @ w[1][0]  # dL/dy1
    expected = {
        ("shortcut_grad_norm", "1"): (g2 @ w[1][2]).norm(),
        ("branch_grad_norm", "1"): (((g2 @ w[1][1]) * (1 - h2**2)) @ w[1][0]).norm(),
        ("shortcut_grad_norm", "0"): (g1 @ w[0][2]).norm(),
        ("branch_grad_norm", "0"): (((g1 @ w[0][1]) * (1 - h1**2)) @ w[0][0]).norm(),
        ("branch_variance", "1"): (h2 @ w[1][1].T).var(0, correction=0).mean(),
        ("channel_variance", "0"): y1.var(0, correction=0).mean(),
        ("channel_mean_sq", "stem"): (x.mean(0) ** 2).mean(),
    }
    for key, value in expected.items():
        assert measured[key] == pytest.approx(float(value), rel=1e-9), key
    shortcut, branch = (
        float(expected[("shortcut_grad_norm", "0")]),
        float(expected[("branch_grad_norm", "0")]),
    )
    share = shortcut / (shortcut + branch)
    assert measured[("shortcut_grad_share", "0")] == pytest.approx(share, rel=1e-9)
    assert 0.05 < share < 0.95  # neither path is trivial here


def _stored_io(model: nn.Module, blocks: list[str], inputs) -> tuple[dict, dict, dict]:
    """Clones of each block's input and output and of its bn2 output (F, before ``+=``)."""
    stored_in, stored_out, branch = {}, {}, {}

    def keep(name: str, module, args, output) -> None:
        stored_in.setdefault(name, args[0].detach().clone())
        stored_out.setdefault(name, output.detach().clone())

    def keep_branch(name: str, module, args, output) -> None:
        branch.setdefault(name, output.detach().clone())

    handles = []
    for name in blocks:
        module = model.get_submodule(name)
        handles.append(module.register_forward_hook(partial(keep, name)))
        if hasattr(module, "bn2"):
            handles.append(module.bn2.register_forward_hook(partial(keep_branch, name)))
    with torch.no_grad():
        model(inputs)
    for handle in handles:
        handle.remove()
    return stored_in, stored_out, branch


def test_torchvision_resnet_statistics_equal_dense_ones_from_stored_activations(resnet_frames):
    model = torchvision_resnet(zero_gamma=False)
    x, _ = image_batch()
    frame = resnet_frames[False]
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in (0, 1)]
    stored_in, stored_out, branch = _stored_io(copy.deepcopy(model), blocks, x)
    mean_sq, variance = by_layer(frame, "channel_mean_sq"), by_layer(frame, "channel_variance")
    assert (mean_sq["stem"], variance["stem"]) == pytest.approx(
        dense_channel_stats(stored_in["layer1.0"], 1), rel=1e-5
    )
    for name in blocks:
        assert (mean_sq[name], variance[name]) == pytest.approx(
            dense_channel_stats(stored_out[name], 1), rel=1e-5
        )
        assert by_layer(frame, "branch_variance")[name] == pytest.approx(
            dense_channel_stats(branch[name], 1)[1], rel=1e-5
        )
    share = by_layer(frame, "shortcut_grad_share")
    assert ((share > 0.2) & (share < 0.8)).all()  # BN branches at init: both paths matter


def test_pre_ln_transformer_uses_the_feature_axis_and_its_split_matches_autograd():
    model, tokens, targets = user_models.pre_ln_encoder()[:3]
    model.eval()  # no dropout: the twin below computes the same function
    frame = gf.record(model, tokens, targets, probes=SIGNAL)
    layers = ["encoder.layers.0", "encoder.layers.1"]
    twin = copy.deepcopy(model)
    stored_in, stored_out, _ = _stored_io(twin, layers, tokens)
    for name in layers:
        assert stored_out[name].dim() == 3  # (batch, tokens, features): channel = features
        mean_sq, variance = dense_channel_stats(stored_out[name], 2)
        assert by_layer(frame, "channel_variance")[name] == pytest.approx(variance, rel=1e-5)
        assert by_layer(frame, "channel_mean_sq")[name] == pytest.approx(mean_sq, rel=1e-5)
        branch = stored_out[name] - stored_in[name]  # pre-LN: y = x + F(x)
        assert by_layer(frame, "branch_variance")[name] == pytest.approx(
            dense_channel_stats(branch, 2)[1], rel=1e-4
        )
    # independent backward: dL/dy of every layer, then F's VJP by re-running the layer
    outputs = {}

    def keep(name: str, module, args, output) -> None:
        outputs.setdefault(name, output)

    hooks = [twin.get_submodule(n).register_forward_hook(partial(keep, n)) for n in layers]
    loss = F.cross_entropy(twin(tokens), targets)
    grads = dict(zip(layers, torch.autograd.grad(loss, [outputs[n] for n in layers]), strict=True))
    for hook in hooks:
        hook.remove()
    for name in layers:
        z = stored_in[name].clone().requires_grad_(True)
        layer = twin.get_submodule(name)
        (through_f,) = torch.autograd.grad(layer(z) - z, z, grads[name])
        assert by_layer(frame, "shortcut_grad_norm")[name] == pytest.approx(
            float(grads[name].norm()), rel=1e-4
        )
        assert by_layer(frame, "branch_grad_norm")[name] == pytest.approx(
            float(through_f.norm()), rel=1e-4
        )


def test_two_batches_in_one_step_give_the_statistics_of_the_concatenated_batch():
    model = torchvision_resnet(zero_gamma=False).eval()  # BN: running statistics, per sample
    x, y = image_batch(12)

    found = gf.structure(model, x)

    def measure(parts: list[slice]) -> pd.Series:
        twin = copy.deepcopy(model)
        with Recorder(twin, SIGNAL, structure=found) as rec:
            for part in parts:
                F.cross_entropy(twin(x[part]), y[part], reduction="sum").backward()
            rec.step()
        return rec.frame().set_index(["quantity", "layer"]).value

    whole, halves = measure([slice(0, 12)]), measure([slice(0, 5), slice(5, 12)])
    assert len(whole) == len(halves) == 7 * 2 + 6 * 4
    pd.testing.assert_series_equal(halves.sort_index(), whole.sort_index(), rtol=1e-5)


def test_the_report_shows_the_signal_propagation_panel_and_the_shortcut_share(
    tmp_path, resnet_frames
):
    records = pd.concat(resnet_frames.values(), ignore_index=True)
    forward, backward = _forward_section(records), _backward_section(records)
    assert [stem for stem, _, _ in forward.figures] == ["signal_propagation"]  # at init
    assert "shortcut_grad_share" in [stem for stem, _, _ in backward.figures]
    trained = _forward_section(records.assign(step=10))
    assert [stem for stem, _, _ in trained.figures] == ["signal_propagation", "response_std"]
    Report("signal", [forward, backward]).write(tmp_path, markdown_name="report.md")
    markdown = (tmp_path / "report.md").read_text()
    assert "![Signal propagation plot: average channel variance" in markdown
    assert "figures/signal_propagation.png" in markdown
    assert "figures/shortcut_grad_share.png" in markdown
    html = (tmp_path / "report.html").read_text()
    assert "Signal propagation plot (Brock, De and Smith 2021)" in html
    assert html.count("data:image/png;base64,") == 3
    for stem in ("signal_propagation", "shortcut_grad_share"):
        assert (tmp_path / "figures" / f"{stem}.png").stat().st_size > 10_000
