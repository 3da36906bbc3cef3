"""hf:MODEL_TYPE: transformers models from a config, random weights, nothing fetched."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch

import gradflow as gf
from gradflow.errors import UserInputError
from gradflow.models import model_source
from gradflow.models.external import accepted_options

transformers = pytest.importorskip("transformers")


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test: hf: models must build offline."""

    def refuse(*args, **kwargs):
        raise AssertionError("hf: tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_gpt2_from_a_small_config_with_options(no_network):
    offline_before = os.environ.get("HF_HUB_OFFLINE")
    torch.manual_seed(0)
    source = model_source("hf:gpt2", n_layer=2, n_embd=64)
    model, config = source.model, source.model.config
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert (config.n_layer, config.n_embd, config.n_head, config.vocab_size) == (2, 64, 4, 1024)
    assert config.resid_pdrop == config.attn_pdrop == config.embd_pdrop == 0.0
    assert config.eos_token_id == 1023  # clipped into the small vocabulary
    assert os.environ.get("HF_HUB_OFFLINE") == offline_before  # restored after the call
    inputs, labels = source.batch(3, seed=0)
    assert inputs["input_ids"].shape == (3, 32) and torch.equal(labels, inputs["input_ids"])
    assert int(inputs["input_ids"].max()) < 1024 and torch.all(inputs["attention_mask"] == 1)
    loss = source.loss_fn(model(**inputs), labels)
    # random init (std 0.02): near-uniform predictions, loss close to log(vocab)
    assert abs(loss.item() - math.log(1024)) < 0.1
    reference = model(**inputs, labels=labels).loss  # HF's own shifted LM loss
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_same_seed_same_weights_and_generic_model_types(no_network):
    torch.manual_seed(0)
    first = gf.create_model("hf:gpt2", n_layer=1)
    torch.manual_seed(0)
    second = gf.create_model("hf:gpt2", num_hidden_layers=1)  # the generic name, mapped
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    llama = model_source("hf:llama", num_hidden_layers=2)
    assert type(llama.model).__name__ == "LlamaForCausalLM"
    assert llama.model.config.num_key_value_heads == llama.model.config.num_attention_heads == 4
    assert llama.loss_fn is not None
    vit = model_source("hf:vit", num_hidden_layers=1)  # no causal-LM head: AutoModel
    assert type(vit.model).__name__ == "ViTModel"
    assert vit.example_inputs is None and vit.loss_fn is None
    assert vit.input_size == (3, 224, 224)


def test_bad_hf_names_and_options_say_what_is_allowed():
    with pytest.raises(UserInputError, match=r"no model type 'gpt3'; did you mean .*hf:gpt2"):
        gf.create_model("hf:gpt3")
    with pytest.raises(UserInputError, match=r"GPT2Config has no option 'n_layers'.*n_layer"):
        gf.create_model("hf:gpt2", n_layers=2)
    with pytest.raises(UserInputError, match=r"could not be built from GPT2Config .*divisible"):
        gf.create_model("hf:gpt2", n_embd=130)


def test_accepted_options_keeps_what_the_config_knows():
    options = {"num_classes": 10, "in_channels": 3, "n_layer": 2, "attn_implementation": "sdpa"}
    assert accepted_options("hf:gpt2", options) == {"n_layer": 2, "attn_implementation": "sdpa"}
