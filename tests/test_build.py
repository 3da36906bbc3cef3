"""build_model (one constructor path for every caller) and the one checkpoint loader."""

from __future__ import annotations

import pytest
import torch

from gradflow.checkpoint import load_state_dict, load_weights
from gradflow.errors import UserInputError
from gradflow.models.build import build_model, model_options


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_same_weights_other_seed_other_weights():
    first = build_model("resnet8", options={"num_classes": 10}, seed=3)
    torch.rand(5)  # whatever the global RNG did in between
    again = build_model("resnet8", options={"num_classes": 10}, seed=3)
    other = build_model("resnet8", options={"num_classes": 10}, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(again), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(other), strict=True))


def test_options_are_filtered_by_source(tmp_path):
    options = {"num_classes": 7, "in_channels": 1, "init": None}
    assert model_options("resnet8", options) == {"num_classes": 7, "in_channels": 1}
    assert model_options("torchvision:resnet18", options) == {"num_classes": 7}
    factory = tmp_path / "net.py"
    factory.write_text(
        "import torch\ndef build(num_classes=10):\n    return torch.nn.Linear(4, num_classes)\n"
    )
    assert model_options(f"{factory}:build", options) == {"num_classes": 7}
    model = build_model(f"{factory}:build", options=options, seed=0)
    assert model.out_features == 7
    with pytest.raises(ValueError, match="in_channels"):  # a registry name gets every option
        build_model("resnet8", options={"in_channel": 1})


def test_one_loader_for_raw_and_trainer_checkpoints(tmp_path):
    model = build_model("resnet8", seed=0)
    state = model.state_dict()
    torch.save(state, tmp_path / "raw.pt")
    torch.save({"model": state, "config": {"model": "resnet8"}}, tmp_path / "final.pt")
    for name in ("raw.pt", "final.pt"):
        target = build_model("resnet8", seed=1)
        load_weights(target, tmp_path / name, "resnet8")
        assert all(
            torch.equal(a, b) for a, b in zip(_weights(model), _weights(target), strict=True)
        )
    assert set(load_state_dict(tmp_path / "final.pt")) == set(state)


def test_loader_refuses_code_missing_files_and_other_models(tmp_path):
    torch.save({"model": build_model("resnet8").state_dict(), "x": slice(1)}, tmp_path / "odd.pt")
    with pytest.raises(UserInputError, match="cannot load checkpoint"):  # weights_only
        load_state_dict(tmp_path / "odd.pt")
    with pytest.raises(UserInputError, match="does not exist"):
        load_state_dict(tmp_path / "none.pt")
    torch.save(build_model("resnet8").state_dict(), tmp_path / "r8.pt")
    with pytest.raises(UserInputError, match="does not match model resnet14"):
        load_weights(build_model("resnet14"), tmp_path / "r8.pt", "resnet14")
