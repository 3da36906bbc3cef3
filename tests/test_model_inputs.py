"""What each analysed model is fed (gradflow.model_inputs): parsing, choice, checks, no mutation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.model_inputs import (
    first_layer_check,
    input_size_text,
    parse_model_options,
    parse_shape,
)
from gradflow.testing import assert_unchanged


def test_parse_shape_and_model_options():
    assert parse_shape("3,224,224") == parse_shape("3x224x224") == parse_shape((3, 224, 224))
    assert parse_shape("32") == (32,)
    for bad in ("", "3,-1", "a,b"):
        with pytest.raises(UserInputError, match="positive sizes like 3,224,224"):
            parse_shape(bad)
    options = parse_model_options("n_layer=2,n_embd=32,act=gelu_new,bias=False,p=0.5")
    assert options == {"n_layer": 2, "n_embd": 32, "act": "gelu_new", "bias": False, "p": 0.5}
    with pytest.raises(UserInputError, match="key=value"):
        parse_model_options("n_layer")


def test_linear_first_layer_fed_images_is_refused_not_broadcast():
    mlp = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 2))
    images = torch.randn(2, 3, 32, 32)
    assert mlp(images).shape == (2, 3, 32, 2)  # what torch silently does
    with pytest.raises(UserInputError, match="pass --input-shape 32"):
        first_layer_check(mlp, images, "mlp")
    first_layer_check(mlp, torch.randn(2, 32), "mlp")  # vectors: fine
    first_layer_check(mlp, torch.randn(2, 5, 32), "mlp")  # a sequence of features: fine
    assert input_size_text(images) == "3x32x32"


def test_api_module_with_input_shape_is_measured_unchanged():
    mlp = nn.Sequential(*(nn.Sequential(nn.Linear(12, 12), nn.Tanh()) for _ in range(4)))
    mlp.train()
    with assert_unchanged(mlp):
        result = gf.analyze(
            {"mlp": mlp}, input_shape=(12,), loss="mse", batch_size=4, samples=1, k=2,
            progress=False,
        )  # fmt: skip
    about = result.meta["inputs"]["mlp"]
    assert about["inputs"] == "float32[4, 12]" and about["loss"].startswith("mse on random")
    assert set(result.spectra["operator"]) == {"J_H", "prod"}
    assert result.summary.loc[0, "blocks"] == 4
    assert result.meta["data"]["description"].startswith("none")


def test_zoo_imagenet_net_is_fed_its_registry_size():
    from gradflow.analyze import measurement_dataset
    from gradflow.configs import AnalysisConfig
    from gradflow.model_inputs import OnDemand, probe_for

    config = AnalysisConfig(["resnet18"], batch_size=2)
    data = OnDemand(lambda: measurement_dataset(config))
    probe = probe_for("resnet18", "resnet18", config, data, torch.device("cpu"))
    assert probe.inputs.shape == (2, 3, 224, 224)  # not the data set's 3x32x32
    about = probe.meta()
    assert about["input_size"] == "3x224x224" and about["kind"] == "images"
    assert about["notes"] == ["synthetic images 3x224x224"]
    assert about["loss"] == "auto on the data set's labels"
