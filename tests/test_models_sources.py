"""model_source: zoo, model files (the example_inputs / loss contract) and their bad input."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from torch import nn

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.models import ModelSource, model_source

MODEL_FILE = """
import torch
from torch import nn

def build(width=4):
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2))

def example_inputs(batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, generator=g)
    return x, torch.randint(0, 2, (batch_size,), generator=g)

def loss(output, targets):
    return torch.nn.functional.cross_entropy(output, targets) * 2

def broken(width=4):
    raise RuntimeError("width must be even\\nsee the docs")
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(MODEL_FILE)
    return path


def test_zoo_source_has_the_registry_input_size():
    with torch.device("meta"):
        cifar = model_source("resnet20", num_classes=7)
        imagenet = model_source("resnet50")
    assert isinstance(cifar, ModelSource) and cifar.model.fc.out_features == 7
    assert cifar.input_size == (3, 32, 32) and imagenet.input_size == (3, 224, 224)
    assert cifar.example_inputs is None and cifar.loss_fn is None
    assert cifar.description == "resnet20"


def test_model_file_contract_gives_inputs_targets_and_loss(model_file):
    source = model_source(f"{model_file}:build", width=5)
    assert source.model[0].out_features == 5 and source.input_size is None
    inputs, targets = source.batch(6, seed=3)
    assert inputs.shape == (6, 3) and targets.shape == (6,)
    again, _ = source.batch(6, seed=3)
    assert torch.equal(inputs, again)  # the seed fixes the batch
    value = source.loss_fn(source.model(inputs), targets)
    expected = 2 * nn.functional.cross_entropy(source.model(inputs), targets)
    assert value.item() == pytest.approx(expected.item())


def test_model_file_without_hooks_and_positional_or_dict_inputs(tmp_path):
    path = tmp_path / "two.py"
    path.write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n    return nn.Bilinear(2, 3, 1)\n"
        "def example_inputs(batch_size, seed):\n"
        "    return (torch.ones(batch_size, 2), torch.ones(batch_size, 3)), None\n"
    )
    source = model_source(f"{path}:build")
    inputs, targets = source.batch(4)
    assert isinstance(inputs, tuple) and len(inputs) == 2 and targets is None
    assert source.model(*inputs).shape == (4, 1) and source.loss_fn is None
    plain = tmp_path / "plain.py"
    plain.write_text("from torch import nn\ndef build():\n    return nn.Linear(2, 2)\n")
    source = model_source(f"{plain}:build")
    assert source.example_inputs is None and source.loss_fn is None
    with pytest.raises(UserInputError, match="gives no example inputs"):
        source.batch(2)


@pytest.mark.parametrize(
    "body, message",
    [
        ("return [1, 2]", "returned list: return a tensor, a tuple"),
        ("return (1, 2, 3)", "a tuple of 3: a tuple is read as \\(inputs, targets\\)"),
        ("raise KeyError('vocab')", "example_inputs of .*bad.py:build raised KeyError: 'vocab'"),
    ],
)
def test_bad_example_inputs_say_what_to_return(tmp_path, body, message):
    path = tmp_path / "bad.py"
    path.write_text(
        "from torch import nn\ndef build():\n    return nn.Linear(2, 2)\n"
        f"def example_inputs(batch_size, seed):\n    {body}\n"
    )
    with pytest.raises(UserInputError, match=message):
        model_source(f"{path}:build").batch(2)


def test_a_raising_factory_is_one_line_naming_file_factory_and_message(model_file):
    for build in (gf.create_model, model_source):
        with pytest.raises(UserInputError) as caught:
            build(f"{model_file}:broken")
        message = str(caught.value)
        assert "\n" not in message
        assert message == (
            f"{model_file}:broken raised RuntimeError: width must be even see the docs"
        )
    with pytest.raises(UserInputError, match=r"does not accept these options.*depth"):
        model_source(f"{model_file}:build", depth=3)


def test_missing_file_or_factory_says_what_to_pass(tmp_path, model_file):
    with pytest.raises(UserInputError, match=r"does not exist \(pass path/to/file.py:FACTORY\)"):
        model_source(f"{tmp_path / 'nope.py'}:build")
    with pytest.raises(UserInputError, match=r"no callable 'missing'; callables there: .*build"):
        model_source(f"{model_file}:missing")
    suggestion = re.escape(f"needs a factory: pass {model_file}:build")
    for spec in (str(model_file), f"{model_file}:"):
        with pytest.raises(UserInputError, match=suggestion):
            gf.create_model(spec)


def test_a_model_file_runs_only_when_named(tmp_path):
    path = tmp_path / "loud.py"
    marker = tmp_path / "ran"
    path.write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from torch import nn\ndef build():\n    return nn.Linear(1, 1)\n"
    )
    with pytest.raises(UserInputError, match="needs a factory"):
        gf.create_model(str(path))  # the suggestion is read with ast, not by importing
    model_source("resnet20")
    assert not marker.exists()
    model_source(f"{path}:build")
    assert marker.exists()


def test_hf_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    with pytest.raises(UserInputError, match=r"pip install 'gradflow\[hf\]'"):
        model_source("hf:gpt2")
