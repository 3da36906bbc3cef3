"""gradflow.structure beyond the basics: post-norm blocks (J_F of the pre-norm sum), residual
additions in the model's own forward (a two-input model), where ``prod`` starts."""

from __future__ import annotations

import numpy as np
import torch
import user_models  # tests/ is on sys.path (pytest rootdir-relative import)
from torch import nn
from torch.autograd.functional import jacobian

import gradflow as gf
import gradflow.testing as gft


def svd(matrix: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(matrix.detach().numpy(), compute_uv=False)


class PostNormBlock(nn.Module):
    """LN(x + W2 tanh(W1 x)): one post-LN sublayer (Xiong et al. 2020)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.norm = nn.LayerNorm(width)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.branch(x))


class PostNormNet(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(3, width)
        self.blocks = nn.Sequential(PostNormBlock(width), PostNormBlock(width))
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)))


def _by_operator(spectra) -> dict[str, np.ndarray]:
    return {op: np.sort(g.sigma.to_numpy())[::-1] for op, g in spectra.groupby("operator")}


def test_post_norm_block_gives_j_h_and_j_f_of_its_pre_norm_sum_equal_to_dense_jacobians():
    torch.manual_seed(1)
    model = PostNormNet().double()
    with torch.no_grad():  # non-trivial LN affine parameters
        for block in model.blocks:
            block.norm.weight.uniform_(0.5, 1.5)
            block.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(1, 3, dtype=torch.float64)
    frame = gf.structure(model, x).frame()
    assert list(frame.j_f) == ["pre_norm"] * 2 and list(frame.skip_path) == ["add > norm"] * 2
    with gft.assert_unchanged(model):
        spectra = gf.block_spectra(model, x, k=4, depths=[2], samples=1, method="dense",
                                   operators=("block",), hutchinson=0)  # fmt: skip
    block = model.blocks[1]
    z = model.blocks[0](model.embed(x)).detach()
    whole = jacobian(block, z).reshape(4, 4)
    pre_norm = jacobian(lambda v: v + block.branch(v), z).reshape(4, 4)
    branch = jacobian(block.branch, z).reshape(4, 4)
    identity = torch.eye(4, dtype=torch.float64)
    assert not torch.allclose(pre_norm, identity, atol=1e-2)  # I + J_F really differs from I
    assert not torch.allclose(whole, pre_norm, atol=1e-2)  # the norm changes the Jacobian
    got = _by_operator(spectra)
    assert set(got) == {"J_H", "I+J_F", "J_F"}  # the whole block is J_H, not I+J_F
    for operator, matrix in (("J_H", whole), ("I+J_F", pre_norm), ("J_F", branch)):
        np.testing.assert_allclose(got[operator], svd(matrix), rtol=1e-8, atol=1e-10)


def test_post_ln_transformer_layer_is_j_h_without_j_f_and_says_why():
    model, tokens, _ = user_models.post_ln_encoder()
    frame = gf.structure(model, tokens).frame()
    assert frame.j_f.isna().all()  # LN1 lies between the two additions of the skip path
    assert set(frame.skip_path) == {"add > norm > add > norm"}
    spectra = gf.block_spectra(model.eval(), tokens, k=2, depths=[1], samples=1, max_matvecs=16,
                               operators=("block",), hutchinson=0)  # fmt: skip
    assert set(spectra.operator) == {"J_H"}
    pre, tokens, _ = user_models.pre_ln_encoder()
    frame = gf.structure(pre, tokens).frame()
    assert set(frame.j_f) == {"difference"} and set(frame.skip_path) == {"add > add"}


def test_prod_from_is_a_column_of_every_spectra_row():
    model, tokens, _ = user_models.pre_ln_encoder()
    spectra = gf.block_spectra(model.eval(), tokens, k=2, depths=[1], samples=1, max_matvecs=16,
                               hutchinson=0)  # fmt: skip
    assert set(spectra.prod_from) == {"stem"}  # token ids: from the embedding output
    model, x, _ = user_models.residual_mlp()
    spectra = gf.block_spectra(model, x, k=2, depths=[1], samples=1, max_matvecs=16, hutchinson=0)
    assert set(spectra.prod_from) == {"input"}
    summary = gf.summarize_spectra(spectra)
    assert set(summary.prod_from) == {"input"}


def test_two_input_models_residual_adds_in_its_forward_are_found_and_exact():
    torch.manual_seed(2)
    model, (image, features), _ = user_models.two_input()
    model = model.double()
    inputs = (image[:1].double(), features[:1].double())
    frame = gf.structure(model, inputs).frame()
    assert list(frame.block) == ["fuse.0", "fuse.1", "fuse.2"]
    assert set(frame.kind) == {"residual"} and set(frame.j_f) == {"difference"}
    assert all(path.startswith("add (in the model's forward") for path in frame.skip_path)
    with gft.assert_unchanged(model):
        spectra = gf.block_spectra(model, inputs, k=4, depths=[2, 3], samples=1, method="dense",
                                   hutchinson=0)  # fmt: skip
    z = torch.flatten(model.conv(inputs[0]), 1) + model.feat(inputs[1])
    z = (z + torch.relu(model.fuse[0](z))).detach()  # the input of fuse.1
    whole = jacobian(lambda v: v + torch.relu(model.fuse[1](v)), z).reshape(16, 16)
    identity = torch.eye(16, dtype=torch.float64)
    assert not torch.allclose(whole, identity, atol=1e-2)  # I + J_F really differs from I
    got = _by_operator(spectra[spectra.depth == 2])
    for operator, matrix in (("I+J_F", whole), ("J_F", whole - identity)):
        exact = svd(matrix)  # k=4, which="both": the top 4 and the bottom 4 singular values
        np.testing.assert_allclose(got[operator][:4], exact[:4], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(got[operator][-4:], exact[-4:], rtol=1e-8, atol=1e-10)

    def to_block2(v):  # image -> the input of fuse.2
        h = torch.flatten(model.conv(v), 1) + model.feat(inputs[1])
        for layer in model.fuse[:2]:
            h = h + torch.relu(layer(h))
        return h.detach()

    def to_block3(v):  # image -> output of the segment of fuse.2 (the input of the head)
        h = torch.flatten(model.conv(v), 1) + model.feat(inputs[1])
        for layer in model.fuse:
            h = h + torch.relu(layer(h))
        return h

    prod = jacobian(to_block3, inputs[0]).reshape(16, -1)
    got = _by_operator(spectra[spectra.depth == 3])
    np.testing.assert_allclose(got["prod"][:4], svd(prod)[:4], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got["I+J_F"][:4], svd(jacobian(  # the last segment ends at the head
        lambda v: v + torch.relu(model.fuse[2](v)), to_block2(inputs[0])).reshape(16, 16))[:4],
        rtol=1e-8, atol=1e-10)  # fmt: skip
