"""gradflow.structure: blocks, residual recognition, J_F routes checked against dense
Jacobians; private copies without user hooks; bad inputs; default losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import user_models  # tests/ is on sys.path (pytest rootdir-relative import)
from torch import nn
from torch.autograd.functional import jacobian

import gradflow as gf
import gradflow.testing as gft
from gradflow.errors import UserInputError
from gradflow.losses import LOSSES, default_loss, resolve_loss


def svd(matrix: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(matrix.detach().numpy(), compute_uv=False)


def test_resnet_blocks_stages_and_shortcuts():
    model, x, _ = user_models.resnet()
    st = gf.structure(model, x)
    frame = st.frame()
    assert list(frame.block) == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                                 "layer3.1"]  # fmt: skip
    assert list(frame.stage) == [1, 1, 2, 2, 3, 3] and list(frame["index"]) == [1, 2] * 3
    assert set(frame.kind) == {"residual"}
    shortcuts = ["identity", "identity", "projection", "identity", "projection", "identity"]
    assert list(frame.shortcut) == shortcuts
    assert list(frame.last_norm) == [f"{b}.bn2" for b in frame.block]
    assert st.stem == ["conv1", "bn1", "relu", "maxpool"] and st.head == ["avgpool", "fc"]
    assert frame.out_shape[2] == (4, 16, 4, 4) and "layer2.0" in str(st)


def test_unet_blocks_are_its_modules_in_call_order_and_plain_nets_are_plain():
    model, x, _ = user_models.unet()
    assert list(gf.structure(model, x).frame().block) == ["inc", "down1", "down2", "up1", "up2",
                                                          "outc"]  # fmt: skip
    model, x, _ = user_models.plain_mlp()
    frame = gf.structure(model, x).frame()
    assert list(frame.block) == [f"layers.{i}" for i in range(8)] and set(frame.kind) == {"plain"}


def test_transformers_pre_ln_splits_j_f_post_ln_does_not():
    pre = gf.structure(*user_models.pre_ln_encoder()[:2]).frame()
    post = gf.structure(*user_models.post_ln_encoder()[:2]).frame()
    assert list(pre.block) == ["encoder.layers.0", "encoder.layers.1"]
    assert set(pre.kind) == set(post.kind) == {"residual"}
    assert set(pre.shortcut) == set(post.shortcut) == {"identity"}
    assert set(pre.j_f) == {"difference"} and post.j_f.isna().all()


def test_zoo_models_go_through_named_blocks():
    model = gf.create_model("resnet20", shortcut="B")
    st = gf.structure(model, torch.randn(2, 3, 8, 8))
    frame = st.frame()
    assert st.source == "named_blocks" and len(frame) == 9
    assert list(frame.block) == [path for path, _ in model.named_blocks()]
    assert list(frame.shortcut[:4]) == ["identity"] * 3 + ["projection"]
    assert set(frame.j_f) == {"branch"} and list(frame.stage) == [1] * 3 + [2] * 3 + [3] * 3


class Tiny(nn.Module):
    """relu(bn2(conv2 relu(bn1 conv1 x)) + x), and a pre-LN MLP block: both in double."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 1)
        self.layers = nn.Sequential(user_models.BasicBlock(3, 3), user_models.BasicBlock(3, 3))

    def forward(self, x):
        return self.layers(self.stem(x)).mean((2, 3))


@pytest.mark.parametrize("which", ["resnet", "pre_ln"])
def test_i_plus_j_f_and_j_f_match_dense_jacobians(which):
    torch.manual_seed(3)
    if which == "resnet":
        model = Tiny().double().eval()
        for norm in model.modules():
            if isinstance(norm, nn.BatchNorm2d):  # non-trivial eval-mode statistics
                norm.running_mean.uniform_(-0.5, 0.5)
                norm.running_var.uniform_(0.5, 2.0)
        x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
        block = model.layers[1]
        z = model.layers[0](model.stem(x)).detach()

        def branch(v):
            return block.bn2(block.conv2(F.relu(block.bn1(block.conv1(v)))))
    else:
        model = user_models.ResidualMLP(inputs=5, width=6, depth=2).double().eval()
        x = torch.randn(1, 5, dtype=torch.float64)
        block = model.blocks[1]
        z = model.blocks[0](model.embed(x)).detach()
        branch = None
    spectra = gf.block_spectra(
        model, x, k=4, depths=[2], samples=1, method="dense", operators=("block",),
        hutchinson=0, bn="eval",
    )  # fmt: skip
    whole = jacobian(lambda v: block(v.clone()), z).reshape(z.numel(), z.numel())
    identity = torch.eye(z.numel(), dtype=torch.float64)
    assert not torch.allclose(whole, identity, atol=1e-3)  # I + J_F really differs from I
    expected_f = (whole - identity) if branch is None else jacobian(branch, z).reshape_as(whole)
    got = {op: np.sort(g.sigma.to_numpy())[::-1] for op, g in spectra.groupby("operator")}
    for operator, matrix in (("I+J_F", whole), ("J_F", expected_f)):
        exact = svd(matrix)  # k=4, which="both": the top 4 and the bottom 4 singular values
        np.testing.assert_allclose(got[operator][:4], exact[:4], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(got[operator][-4:], exact[-4:], rtol=1e-8, atol=1e-10)


def test_user_hooks_never_fire_and_full_backward_hooks_do_not_break_spectra():
    model, x, _ = user_models.residual_mlp()
    calls = []
    model.blocks[0].register_forward_hook(lambda *a: calls.append("forward"))
    model.blocks[1].register_forward_pre_hook(lambda *a: calls.append("pre"))
    model.blocks[2].register_full_backward_hook(lambda *a: calls.append("backward"))
    model.head.register_full_backward_pre_hook(lambda *a: calls.append("backward_pre"))
    with gft.assert_unchanged(model):
        gf.structure(model, x)
        spectra = gf.block_spectra(model, x, k=2, depths=[1, 3], samples=1, max_matvecs=16)
        gf.calibrated_copy(model, x)
    assert calls == [] and {"I+J_F", "J_F", "prod"} <= set(spectra.operator)


def test_fused_attention_runs_with_math_kernels_and_restores_the_flags():
    model, tokens, _ = user_models.pre_ln_encoder()
    fast = torch.backends.mha.get_fastpath_enabled()
    spectra = gf.block_spectra(model.eval(), tokens, k=2, depths=[2], samples=1, max_matvecs=16)
    assert "math kernels" in spectra.attrs["jacobian_route"]
    assert spectra.attrs["prod_from"] == "stem"  # token ids: from the embedding output
    assert torch.backends.mha.get_fastpath_enabled() == fast


def test_bad_inputs_are_reported_before_any_work():
    model, _, y = user_models.resnet()
    for call in (
        lambda: gf.structure(model, torch.randn(2, 5)),
        lambda: gf.record(model, torch.randn(2, 5), y[:2]),
        lambda: gf.block_spectra(model, torch.randn(2, 5)),
    ):
        with pytest.raises(UserInputError, match=r"fails on the inputs float32\[2, 5\]"):
            call()
    with pytest.raises(UserInputError, match="tensor, a tuple"):
        gf.structure(model, "images")
    with pytest.raises(UserInputError, match="no blocks found"):
        gf.structure(nn.Linear(3, 3), torch.randn(2, 3))


def test_default_losses_by_output_type():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 0])
    assert torch.equal(default_loss(logits, labels), F.cross_entropy(logits, labels))
    assert torch.equal(default_loss({"logits": logits}, labels), F.cross_entropy(logits, labels))
    target = torch.randn(4, 3)
    assert torch.equal(default_loss(logits, target), F.mse_loss(logits, target))
    tokens = torch.randint(0, 5, (2, 4))
    lm_logits = torch.randn(2, 4, 5)
    shifted = F.cross_entropy(lm_logits[:, :-1].reshape(-1, 5), tokens[:, 1:].reshape(-1))
    assert torch.allclose(default_loss({"logits": lm_logits}, tokens), shifted)
    assert resolve_loss("sum_output")((logits, target), None) == logits.sum() + target.sum()
    assert set(LOSSES) == {"auto", "cross_entropy", "mse", "lm", "sum_output"}
    with pytest.raises(UserInputError, match="allowed"):
        resolve_loss("hinge")
    with pytest.raises(UserInputError, match="pass loss_fn"):
        default_loss(logits, torch.randn(4))
