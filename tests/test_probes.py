"""Streaming statistics, probe selection and site selection, against exact answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.probes import (
    ActivationGradNorm,
    ResponseStats,
    ResponseStd,
    chan_merge,
    moments_of,
    resolve_probes,
)
from gradflow.sites import default_boundaries, default_response_layers, position, select_modules


@pytest.mark.parametrize("offset", [0.0, 3.0, 1e4])
def test_moments_match_float64_reference_even_with_a_large_offset(offset):
    # offset 1e4 with std 0.5: mean^2 / var = 4e8, where sum/sum-of-squares in float32 would
    # lose every digit; the shifted pass must still give the float64 answer to float32 accuracy
    values = (torch.randn(50_000) * 0.5 + offset).float()
    mean, m2 = moments_of(values)
    reference = values.double()
    assert float(mean) == pytest.approx(float(reference.mean()), rel=1e-6, abs=1e-6)
    assert float(m2) / values.numel() == pytest.approx(float(reference.var(correction=0)), 1e-4)


def test_chan_merge_equals_statistics_of_the_concatenation():
    parts = [torch.randn(n, dtype=torch.float64) * 2 + 5 for n in (1, 7, 100, 13)]
    count, mean, m2 = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for part in parts:
        part_mean = part.mean()
        part_m2 = ((part - part_mean) ** 2).sum()
        count, mean, m2 = chan_merge(count, mean, m2, part.numel(), part_mean, part_m2)
    whole = torch.cat(parts)
    assert count == whole.numel()
    assert float(mean) == pytest.approx(float(whole.mean()), rel=1e-12)
    assert float(m2 / count) == pytest.approx(float(whole.var(correction=0)), rel=1e-12)


def test_response_stats_merge_batches_in_float32():
    batches = [torch.randn(n, 4, 5) * 0.1 + 40 for n in (2, 9, 3)]  # float32, offset data
    stats = ResponseStats(batches[0], moments=True, extrema=True)
    for batch in batches[1:]:
        stats.merge(ResponseStats(batch, moments=True, extrema=True))
    whole = torch.cat(batches).double()
    assert stats.count == whole.numel()
    # float32 inputs: std to ~1e-5 relative (accumulation over 280 values, shift-corrected)
    assert float((stats.m2 / stats.count).sqrt()) == pytest.approx(
        float(whole.std(correction=0)), rel=1e-4
    )
    assert float(stats.low) == float(whole.min()) and float(stats.high) == float(whole.max())


def test_probe_names_resolve_and_unknown_ones_are_rejected():
    probes = resolve_probes(["response_std", "activation_grad_rms", ResponseStd()])
    assert [type(p) for p in probes] == [ResponseStd, ActivationGradNorm]
    assert len(resolve_probes(None)) == 10  # 7 + channel_variance, branch_variance, share
    with pytest.raises(UserInputError, match="unknown probe 'weights'"):
        resolve_probes("weights")


def test_select_modules_by_name_glob_and_type():
    model = gf.create_model("resnet20")
    assert select_modules(model, "fc") == ["fc"]
    assert select_modules(model, "stage1.block?.bn2") == [f"stage1.block{i}.bn2" for i in (1, 2, 3)]
    assert len(select_modules(model, nn.Conv2d)) == 19
    with pytest.raises(UserInputError, match="did you mean"):
        select_modules(model, "stage1.block1.bn9")
    with pytest.raises(UserInputError, match="names, glob patterns or types"):
        select_modules(model, [3])


def test_default_sites_outside_the_zoo():
    nested = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
        nn.ModuleList([nn.Linear(4, 4)]),
    )
    # containers are opened; their non-container children are the boundaries
    assert default_boundaries(nested, []) == ["0", "1.0", "1.1", "2.0"]
    # no normalisation layer: every conv/linear output is a response
    assert default_response_layers(nested) == ["0", "1.0", "2.0"]

    class NoContainer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.norm, self.b = nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 2)

    plain = NoContainer()
    assert default_response_layers(plain) == ["norm"]
    assert default_boundaries(plain, ["norm"]) == ["norm"]


def test_position_of_layers_and_parameters():
    blocks = {"stage2.block3": (2, 3, "residual")}
    assert position("stage2.block3.bn1", blocks) == (2, 3, "residual")
    assert position("stage2.block3.conv1.weight", blocks) == (2, 3, "residual")
    assert position("stage2.block3@2", blocks) == (2, 3, "residual")
    assert position("stage2.block30.bn1", blocks) == (None, None, "other")
    assert position("fc.weight", blocks) == (None, None, "other")
