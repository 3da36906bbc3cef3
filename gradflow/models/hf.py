"""HuggingFace transformers models by type name, built from a config: random weights, no download.

``hf:gpt2`` builds ``GPT2LMHeadModel(GPT2Config(**SMALL, **options))``; any other model type
goes through ``AutoConfig.for_model(type, **config)`` and ``AutoModelForCausalLM`` (or
``AutoModel`` where the type has no causal-LM head) ``.from_config``, never
``from_pretrained``; the hub is set offline during the call. transformers is an optional
extra (``pip install 'gradflow[hf]'``), imported only here, only when an ``hf:`` name is used.

Defaults for small CPU runs, each only where the config has the field (generic names are
mapped through the config's ``attribute_map``, so ``n_layer`` and ``num_hidden_layers`` are
one option for GPT-2): 4 layers, width 128, 4 heads (as many key/value heads), MLP 512,
vocabulary 1024 (special token ids clipped into it), 256 positions, and every dropout 0 so
that a measurement is deterministic; attention runs the "eager" (math) implementation,
which forward-mode AD can differentiate (``attn_implementation=...`` changes it).
Options override them; an option the config does not know is an error.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
from collections.abc import Iterator
from typing import Any

from torch import nn

from ..errors import UserInputError

SMALL = {
    "num_hidden_layers": 4,
    "hidden_size": 128,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "vocab_size": 1024,
    "max_position_embeddings": 256,
}
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# How gradflow builds, not what the config holds; passed to from_config.
BUILD_OPTIONS = ("attn_implementation",)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserInputError(
            "hf: models need transformers, which is not installed; "
            "install it with `pip install 'gradflow[hf]'`"
        ) from None
    return transformers


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """The HuggingFace hub offline (environment and huggingface_hub's constant), restored."""
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({key: "1" for key in saved})
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:
        hub_constants = None
    was = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = was
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def config_class(model_type: str):
    """The config class of a transformers model type, or UserInputError with close names."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING_NAMES), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join('hf:' + c for c in close)}? " if close else ""
        raise UserInputError(
            f"transformers has no model type {model_type!r}; {hint}"
            "(hf:NAME takes a config model_type such as gpt2, llama, bert)"
        )
    return CONFIG_MAPPING[model_type]


def config_keys(cls, default=None) -> dict[str, str]:
    """Every option the config class knows, mapped to the field it sets (attribute_map)."""
    default = cls() if default is None else default
    names = {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "kwargs")}
    names |= {n for n in vars(default) if not n.startswith("_")}
    keys = {name: name for name in names}
    keys.update(getattr(cls, "attribute_map", {}) or {})
    return keys


def config_options(model_type: str, options: dict[str, Any]) -> dict[str, Any]:
    """SMALL defaults and dropout 0 where the config has them, overridden by ``options``."""
    cls = config_class(model_type)
    default = cls()
    keys = config_keys(cls, default)
    unknown = sorted(set(options) - set(keys) - set(BUILD_OPTIONS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(keys), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UserInputError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}{hint}")
    chosen = {keys[k]: v for k, v in options.items() if k in keys}
    defaults = {keys[k]: v for k, v in SMALL.items() if k in keys}
    defaults.update({f: 0.0 for f in set(keys.values()) if f.endswith(("dropout", "pdrop"))})
    defaults.update({f: 0.0 for f in set(keys.values()) if f.endswith("dropout_prob")})
    config = {**defaults, **chosen}
    heads = config.get(keys.get("num_attention_heads", ""))
    if "num_key_value_heads" in keys and "num_key_value_heads" not in chosen and heads:
        config["num_key_value_heads"] = heads
    width = config.get(keys.get("hidden_size", ""))
    if "head_dim" in keys and "head_dim" not in chosen and heads and width:
        config["head_dim"] = width // heads
    vocab = config.get(keys.get("vocab_size", ""))
    for token in TOKEN_IDS:  # special tokens of the full vocabulary: keep them inside it
        value = getattr(default, token, None)
        if vocab and token in keys and token not in chosen and isinstance(value, int):
            config[token] = min(value, vocab - 1)
    return config


def accepted_hf_options(model_type: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that the model type's config (or the build) accepts."""
    _transformers()
    keys = config_keys(config_class(model_type))
    return {k: v for k, v in options.items() if k in keys or k in BUILD_OPTIONS}


def create_hf_model(model_type: str, **options) -> nn.Module:
    """A randomly initialised transformers model of ``model_type`` (seed with torch first)."""
    transformers = _transformers()
    build = {"attn_implementation": options.pop("attn_implementation", "eager")}
    with offline():
        config = transformers.AutoConfig.for_model(
            model_type, **config_options(model_type, options)
        )
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        try:
            return auto.from_config(config, **build)
        except Exception as err:  # an inconsistent config: say which and why, in one line
            message = " ".join(str(err).split())[:300]
            raise UserInputError(
                f"hf:{model_type} could not be built from {type(config).__name__} "
                f"({type(err).__name__}: {message}); check the options"
            ) from None
