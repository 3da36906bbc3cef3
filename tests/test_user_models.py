"""Every user-style model of tests/user_models.py through structure, record, Recorder,
block_spectra and the testing assertions, model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import user_models  # tests/ is on sys.path (pytest rootdir-relative import)

import gradflow as gf
import gradflow.testing as gft
from gradflow.inputs import call_model
from gradflow.losses import default_loss

NAMES = list(user_models.MODELS)
RESIDUAL = {"residual_mlp", "pre_ln_encoder", "post_ln_encoder", "resnet", "gpt2", "two_input"}
POST_NORM = {"post_ln_encoder"}  # LN2(y + FF(y)), y = LN1(x + SA(x)): J_H, no exact J_F


def build(name: str):
    if name == "gpt2":
        pytest.importorskip("transformers")
    return user_models.MODELS[name]()


@pytest.mark.parametrize("name", NAMES)
def test_model_through_every_feature(name):
    model, x, y = build(name)
    with gft.assert_unchanged(model):
        st = gf.structure(model, x)
        blocks = st.frame()
        assert len(blocks) >= 2 and set(blocks.kind) <= {"plain", "residual"}
        assert (set(blocks.kind) == {"residual"}) == (name in RESIDUAL)
        frame = gf.record(model, x, y)
        grads = frame[frame.quantity == "activation_grad_norm"]
        assert set(grads.layer) >= set(blocks.block) and np.isfinite(grads.value).all()
        inside = frame[frame.layer.isin(blocks.block)]
        assert set(inside.kind) == set(blocks.kind)
        spectra = gf.block_spectra(model, x, k=2, depths=[1], samples=1, max_matvecs=16)
        assert np.isfinite(spectra.sigma).all() and "prod" in set(spectra.operator)
        wanted = {"I+J_F"} if name in RESIDUAL - POST_NORM else {"J_H"}
        assert wanted <= set(spectra.operator)
        assert spectra.attrs["prod_from"] == ("stem" if name in {"gpt2"} or "encoder" in name
                                              else "input")  # fmt: skip
        gft.assert_gradient_preserved(model, x, y, max_log10_ratio=10.0)
        try:  # ReLU/max-pool stems are rank deficient (condition inf): a clear failure is fine
            gft.assert_dynamical_isometry(model, x, max_log10_condition=20.0, depth=1, k=2)
        except AssertionError as error:
            assert "no dynamical isometry" in str(error) and "block 1" in str(error)


@pytest.mark.parametrize("name", ["resnet", "two_input", "gpt2"])
def test_recorder_on_user_models_takes_blocks_from_the_structure(name):
    model, x, y = build(name)
    with gf.Recorder(model, ["activation_grad_norm"]) as rec:
        for _ in range(2):
            loss = default_loss(call_model(model, x), y)
            loss.backward()
            rec.step()
    frame = rec.frame()
    frame = frame[frame.quantity == "activation_grad_norm"]
    st = gf.structure(model, x)
    paths = [b.path for b in st.blocks]
    assert list(frame[frame.step == 0].layer) == ["stem", *paths]
    kinds = frame[frame.layer != "stem"].drop_duplicates("layer").kind.tolist()
    assert kinds == [b.kind for b in st.blocks]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
