"""Bounded memory: micro-batched records equal the full batch, the micro-batch comes from the
saved bytes per sample and the budget, the default batch from the input size; meta.json says."""

from __future__ import annotations

import gc
import mmap
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.memory import (
    choose_micro_batch,
    default_batch_size,
    peak_rss_mib,
    process_peak_rss_mib,
    record_fixed_bytes,
    record_lines,
    reset_peak_rss,
    saved_bytes_per_sample,
)
from gradflow.record_pass import micro_batches, record
from gradflow.testing import assert_unchanged

MIB = 2**20


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    ).eval()  # fmt: skip  (eval: BN with running statistics, samples independent)


def batch(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


def assert_same_records(full: pd.DataFrame, micro: pd.DataFrame, rtol: float = 2e-5) -> None:
    keys = ["layer", "depth", "quantity"]
    assert full[keys].equals(micro[keys])
    np.testing.assert_allclose(micro["value"], full["value"], rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("micro", [1, 3, 4])  # uneven slices: 10 = 3 + 3 + 3 + 1, 4 + 4 + 2
def test_micro_batches_equal_the_full_batch(micro, reduction):
    model, (x, y) = small_cnn(), batch()
    loss = "cross_entropy" if reduction == "mean" else (
        lambda out, t: nn.functional.cross_entropy(out, t, reduction="sum")
    )  # fmt: skip
    with assert_unchanged(model):
        full = record(model, x, y, loss, loss_reduction=reduction)
        sliced = record(model, x, y, loss, loss_reduction=reduction, micro_batch=micro)
    assert_same_records(full, sliced)
    # not trivially equal: the gradient norms depend on the batch (a wrong scale would show)
    half = record(model, x[:5], y[:5], loss, loss_reduction=reduction)
    grads = full["quantity"] == "activation_grad_norm"
    assert not np.allclose(half.loc[grads, "value"], full.loc[grads, "value"], rtol=1e-3)


def test_micro_batches_equal_the_full_batch_for_a_zoo_net_in_eval_mode():
    model = gf.create_model("resnet20").eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)
    assert_same_records(record(model, x, y), record(model, x, y, micro_batch=4))


def test_micro_batches_cover_the_batch_once():
    assert micro_batches(10, None) == [slice(0, 10)]
    assert micro_batches(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert micro_batches(3, 8) == [slice(0, 3)]
    with pytest.raises(UserInputError, match="micro_batch"):
        micro_batches(10, 0)


def test_saved_bytes_per_sample_counts_what_autograd_keeps():
    torch.manual_seed(0)
    # Linear (weight requires grad) saves its input: 100 floats per sample; Tanh its output:
    # 200 floats. The weight itself does not grow with the batch and is not counted. The
    # backward's working set: two gradients the size of the largest (200 floats).
    model = nn.Sequential(nn.Linear(100, 200, bias=False), nn.Tanh())
    x = torch.randn(8, 100)
    with assert_unchanged(model):
        assert saved_bytes_per_sample(model, x) == (100 + 200 + 2 * 200) * 4
    # each Tanh output is also the next Linear's input: one tensor, counted once
    deeper = nn.Sequential(*[nn.Sequential(nn.Linear(100, 100), nn.Tanh()) for _ in range(3)])
    assert saved_bytes_per_sample(deeper, x) == (100 + 3 * 100 + 2 * 100) * 4


def test_choose_micro_batch_against_a_fake_budget():
    per_sample = 1 * MIB
    assert choose_micro_batch(per_sample, 128, budget_mib=1024) == 128  # fits whole
    assert choose_micro_batch(per_sample, 128, budget_mib=128) == 128  # exactly
    assert choose_micro_batch(per_sample, 128, budget_mib=100) == 64  # 2 equal slices
    assert choose_micro_batch(per_sample, 128, budget_mib=50) == 43  # 43 + 43 + 42
    assert choose_micro_batch(per_sample, 128, budget_mib=0.5) == 1  # never below one
    assert choose_micro_batch(0.0, 128, budget_mib=1) == 128
    # the parameter gradients take their share first: 100 - 36 leaves room for 64 samples
    assert choose_micro_batch(per_sample, 128, budget_mib=100, fixed_bytes=36 * MIB) == 64
    assert choose_micro_batch(per_sample, 128, budget_mib=100, fixed_bytes=200 * MIB) == 1


def test_record_fixed_bytes_are_two_copies_of_the_trainable_parameters():
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 3))
    model[1].weight.requires_grad_(False)  # frozen: no gradient kept
    assert record_fixed_bytes(model) == 2 * (10 * 5 + 5 + 3) * 4


def test_default_batch_size_by_input_size():
    assert default_batch_size(None) == 128
    assert default_batch_size((3, 32, 32)) == 128
    assert default_batch_size((1, 28, 28)) == 128
    assert default_batch_size((3, 64, 64)) == 128
    assert default_batch_size((3, 128, 128)) == 32
    assert default_batch_size((3, 224, 224)) == 8
    assert default_batch_size((3, 1024, 1024)) == 8


def test_analyze_micro_batches_within_the_budget_and_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4096), nn.ReLU(), nn.Linear(4096, 10))
    options = dict(input_shape="3,8,8", batch_size=1024, samples=1, k=2, progress=False)
    # saved per sample: the input (192 floats) and the ReLU output (4096 floats) and a few
    # for the loss, with two 4096-float gradients of the backward, ~50 KB: 1024 samples need
    # ~48.8 MiB; with the gradients of the 0.8 M parameters (2 x 3.3 MB) a 48 MiB budget
    # takes 2 x 512
    sliced = gf.analyze([("mlp", model)], record_memory=48, **options)
    plan = sliced.meta["record"][0]
    assert 48.5 < plan["saved_mib_per_sample"] * 1024 < 49.5
    assert 6.0 < plan["fixed_mib"] < 6.5
    assert (plan["batch_size"], plan["micro_batches"], plan["micro_batch"]) == (1024, 2, 512)
    assert "fed in 2 micro-batches of at most 512" in record_lines(sliced.meta)[0]
    # one vector of a whole-net product needs < 50 KB: 64 (the most) fit 48 MiB
    assert plan["product_vectors"] == 64
    assert "products on the whole net take 64 vectors at a time" in record_lines(sliced.meta)[0]
    full = gf.analyze([("mlp", model)], record_memory=64, **options)
    assert full.meta["record"][0]["micro_batches"] == 1
    # float32 sums over 1024 x 4096 values, accumulated in another order: rounding ~5e-5
    assert_same_records(full.records, sliced.records, rtol=2e-4)
    phases = {t["phase"] for t in sliced.meta["phase_seconds"] if t["peak_rss_mib"] > 0}
    assert phases == {"record", "spectra"}
    peaks = [t["peak_rss_mib"] for t in sliced.meta["phase_seconds"]]
    assert sliced.meta["process_peak_rss_mib"] >= max(peaks)


def test_peak_rss_restarts_and_sees_an_allocation():
    if not reset_peak_rss():
        pytest.skip("the peak RSS cannot be reset on this system")
    before = peak_rss_mib()
    # a fresh anonymous mapping, every page written: the allocator cannot hand back pages that
    # are already resident (a long-lived worker's freed heap made a bytearray add nothing)
    block = mmap.mmap(-1, 64 * MIB)
    block.write(b"\x01" * (64 * MIB))
    assert peak_rss_mib() >= before + 48
    with_block = peak_rss_mib()
    block.close()
    # a restart hides the earlier peak from the kernel's mark (and getrusage), not from gradflow
    assert reset_peak_rss()
    assert process_peak_rss_mib() >= with_block


@pytest.mark.parametrize("micro", [None, 2])
def test_record_keeps_no_activation_alive_after_it_returns(micro):
    # the split taps' hooks once held the block input in a cycle through autograd's C++ graph
    # (invisible to the garbage collector): every micro-batch leaked one activation per block
    model = gf.create_model("resnet20").eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    seen = []
    blocks = [model.stage1[0], model.stage2[0], model.stage3[2]]  # identity and padded skips
    handles = [
        b.register_forward_pre_hook(lambda m, a: seen.append(weakref.ref(a[0]))) for b in blocks
    ]
    try:
        frame = record(model, x, y, micro_batch=micro)
    finally:
        for handle in handles:
            handle.remove()
    assert (frame["quantity"] == "shortcut_grad_share").any()
    gc.collect()
    assert len(seen) == len(blocks) * (1 if micro is None else 2)
    assert [ref() for ref in seen] == [None] * len(seen)


def _live_graph_tensors() -> int:
    gc.collect()
    return sum(isinstance(o, torch.Tensor) and o.grad_fn is not None for o in gc.get_objects())


def test_memory_measurements_and_spectra_keep_no_activation_alive():
    # saved_bytes' pack hook once returned the saved tensor itself: a ReLU saving its own
    # output then held the output's Python object, which holds the ReLU's node, a C++ cycle
    # the collector cannot see (resnet152's analyze kept ~4 copies of its weights alive)
    model = gf.create_model("resnet20").eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 10, (2,), generator=g)
    weight = weakref.ref(model.stage1[0].conv1.weight)
    before = _live_graph_tensors()
    assert saved_bytes_per_sample(model, x, y) > 0
    assert _live_graph_tensors() == before
    gf.block_spectra(model, x[:1], k=2, depths=[1], which="largest")
    assert _live_graph_tensors() == before
    del model
    gc.collect()
    assert weight() is None


def test_structures_trace_at_most_the_probed_samples(monkeypatch):
    # a structure's trace keeps every block's input and output of the samples it is built
    # on: built on the whole 128-image batch, resnet1202's spectra phase held 2.9 GB of them
    import importlib

    blocks_module = importlib.import_module("gradflow.spectra.blocks")
    structure_module = importlib.import_module("gradflow.structure")  # gf.structure: a function

    traced = []
    real_build = structure_module.build

    def spy(twin, inputs, **kwargs):
        found = real_build(twin, inputs, **kwargs)
        traced.append({call.input.shape[0] for call in found.trace.calls})
        return found

    monkeypatch.setattr(structure_module, "build", spy)
    monkeypatch.setattr(blocks_module, "build", spy)
    torch.manual_seed(0)
    model = nn.Sequential(  # a user chain: blocks and residuals come from structure discovery
        nn.Conv2d(3, 4, 3, padding=1), *[nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh())
                                          for _ in range(4)],
        nn.Flatten(), nn.Linear(4 * 8 * 8, 10),
    )  # fmt: skip
    x = torch.randn(24, 3, 8, 8)
    frame = gf.block_spectra(model, x, k=2, samples=1, which="largest")
    assert set(frame["sample"]) == {0}
    assert traced == [{1}]
    traced.clear()
    result = gf.analyze([("chain", model)], input_shape="3,8,8", batch_size=24, samples=2, k=2,
                        whatif=True, hessian=True, hessian_batch=8, progress=False)  # fmt: skip
    assert result.meta["record"][0]["batch_size"] == 24
    assert len(traced) >= 4  # budget, cost check, record, spectra, what-if, Hessian blocks
    assert all(sizes <= {1, 2} for sizes in traced), traced


def test_record_lines_call_a_chunk_below_the_cap_a_lower_bound():
    plan = dict(model="deep", micro_batches=15, micro_batch=9, batch_size=128,
                saved_mib_per_sample=87.9, record_memory_mib=1024, product_vectors=11)  # fmt: skip
    (line,) = record_lines({"record": [plan]})
    assert line.endswith("spectra products on the whole net take at least 11 vectors at a time.")
    assert "in 15 micro-batches of at most 9" in line
    (capped,) = record_lines({"record": [{**plan, "product_vectors": 64}]})
    assert capped.endswith("take 64 vectors at a time.")
    (none,) = record_lines({"record": [{k: v for k, v in plan.items() if k != "product_vectors"}]})
    assert none.endswith("budget 1024 MiB).")
