"""`gradflow analyze` on user models, as a user runs it: model files, a subprocess, the outputs.

The model files live in tests/user_model_files (written the way users write models: no
gradflow imports). Every bad input exits with code 2 and one line, before any report folder
is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

FILES = Path(__file__).parent / "user_model_files"
TINY = ["--batch-size", "4", "--samples", "1", "--k", "2", "--quiet"]


def gradflow(*args: str, cwd: Path = FILES) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradflow", "analyze", *args, *TINY],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def outputs(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    records = pd.read_csv(out / "data" / "records.csv")
    spectra = pd.read_csv(out / "data" / "spectra.csv")
    return records, spectra, json.loads((out / "meta.json").read_text())


def operators(spectra: pd.DataFrame, model: str) -> set[str]:
    return set(spectra.loc[spectra["model"] == model, "operator"])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One run over five user files: token transformers, a ResNet, two inputs, dict output."""
    out = tmp_path_factory.mktemp("users") / "report"
    models = ["encoder.py:pre_ln", "encoder.py:post_ln", "resnet.py:resnet"]
    models += ["two_input.py:build", "dict_output.py:build"]
    flags = [f for m in models for f in ("--model", m)]
    result = gradflow(*flags, "--input-shape", "3,16,16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result


def test_deep_plain_mlp_with_input_shape(tmp_path):
    out = tmp_path / "mlp"
    result = gradflow("--model", "plain_mlp.py:build", "--input-shape", "32", "--out", str(out))
    assert result.returncode == 0, result.stderr
    records, spectra, meta = outputs(out)
    assert "plain_mlp.py:build: vanishing gradient: it shrinks 10^2.7x" in result.stdout  # tanh
    assert "standard-normal tensor float32[4, 32]" in result.stdout
    assert meta["inputs"]["plain_mlp.py:build"]["input_size"] == "32"
    assert meta["inputs"]["plain_mlp.py:build"]["kind"] == "tensor"
    assert operators(spectra, "plain_mlp.py:build") == {"J_H", "prod"}
    assert set(records["kind"]) <= {"plain", "other"}
    assert meta["data"]["description"].startswith("none")  # no image was rendered


def test_transformers_with_token_example_inputs(mixed):
    out, result = mixed
    records, spectra, meta = outputs(out)
    for model in ("encoder.py:pre_ln", "encoder.py:post_ln"):
        about = meta["inputs"][model]
        assert about["inputs"] == "int64[4, 6]" and about["kind"] == "example_inputs"
        assert "embedding output" in about["jacobians_from"]
        assert f"{model}: gradient" in result.stdout
        # post-LN layers LN2(y + FF(y)), y = LN1(x + SA(x)): the whole layer is J_H
        assert ("J_H" if model.endswith("post_ln") else "I+J_F") in operators(spectra, model)
        norms = records[(records["model"] == model) & (records["quantity"] == "response_std")]
        assert set(norms["layer"]) == {
            f"encoder.layers.{i}.norm{j}" for i in (0, 1) for j in (1, 2)
        }
    assert operators(spectra, "encoder.py:pre_ln") == {"I+J_F", "J_F", "prod"}


def test_torchvision_style_resnet_on_images_of_the_given_size(mixed):
    out, result = mixed
    _, spectra, meta = outputs(out)
    about = meta["inputs"]["resnet.py:resnet"]
    assert about["input_size"] == "3x16x16" and about["kind"] == "images"
    assert "the data set's labels" in about["loss"]
    resnet = spectra[spectra["model"] == "resnet.py:resnet"]
    assert set(resnet["operator"]) == {"I+J_F", "J_F", "prod"}
    assert resnet.loc[resnet["operator"] == "prod", "depth"].max() == 4  # layer1 + layer2 blocks
    assert "resnet.py:resnet inputs: synthetic images 3x16x16" in result.stdout


def test_two_inputs_and_dict_output(mixed):
    out, _ = mixed
    records, spectra, meta = outputs(out)
    two = meta["inputs"]["two_input.py:build"]
    assert two["inputs"] == "(float32[4, 3, 8, 8], float32[4, 5])"
    assert "the targets of example_inputs" in two["loss"]
    assert meta["inputs"]["dict_output.py:build"]["loss"].startswith("loss (from dict_output")
    for model in ("two_input.py:build", "dict_output.py:build"):
        grads = records[(records["model"] == model) & (records["quantity"] == "param_grad_norm")]
        assert len(grads) and (grads["value"] > 0).all()  # the backward pass ran
        assert "prod" in operators(spectra, model)


def test_hf_gpt2_from_a_config(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "gpt2"
    options = "n_layer=2,n_embd=32,n_head=2,vocab_size=64"
    result = gradflow(
        "--model", "hf:gpt2", "--model-options", options, "--seq-len", "8", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    _, spectra, meta = outputs(out)
    about = meta["inputs"]["hf:gpt2"]
    assert about["input_size"] == "8" and about["kind"] == "tokens"
    assert about["loss"].startswith("causal_lm_loss")
    assert operators(spectra, "hf:gpt2") == {"I+J_F", "J_F", "prod"}
    assert spectra.loc[spectra["model"] == "hf:gpt2", "depth"].max() == 2
    assert "hf:gpt2: gradient" in result.stdout


# ------------------------------------------------------------------------------ bad input


BAD = {
    "factory raises": (
        ["--model", "broken.py:raises"],
        "broken.py:raises raised RuntimeError: CUDA is required",
    ),
    "forward fails": (
        ["--model", "broken.py:failing_forward", "--input-shape", "3"],
        "fails on the inputs float32[4, 3]: expected a dict with key 'image'; pass --input-shape",
    ),
    "wrong shape": (
        ["--model", "plain_mlp.py:build", "--input-shape", "16"],
        "fails on the inputs float32[4, 16]",
    ),
    "wrong dtype": (
        ["--model", "broken.py:embedding", "--input-shape", "5"],
        "fails on the inputs float32[4, 5]",
    ),
    "linear fed images": (
        ["--model", "plain_mlp.py:build"],
        "first layer Linear(32, 16) would be applied along the last axis of the images "
        "float32[4, 3, 32, 32]: pass --input-shape 32",
    ),
    "unknown loss": (
        ["--model", "plain_mlp.py:build", "--input-shape", "32", "--loss", "hinge"],
        "unknown loss 'hinge'; allowed: auto, cross_entropy, mse, lm, sum_output (--loss)",
    ),
    "unknown hf type": (["--model", "hf:gpt3"], "transformers has no model type 'gpt3'"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every bad-input case as its own subprocess, started together (each is short)."""
    runs = {}
    for case, (args, _) in BAD.items():
        out = tmp_path_factory.mktemp("bad") / "out"
        command = [sys.executable, "-m", "gradflow", "analyze", *args, *TINY, "--out", str(out)]
        runs[case] = (subprocess.Popen(command, cwd=FILES, stdout=-1, stderr=-1, text=True), out)
    done = {}
    for case, (process, out) in runs.items():
        stdout, stderr = process.communicate(timeout=600)
        done[case] = (subprocess.CompletedProcess([], process.returncode, stdout, stderr), out)
    return done


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(case, bad_runs):
    if case == "unknown hf type":
        pytest.importorskip("transformers")
    _, message = BAD[case]
    result, out = bad_runs[case]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradflow analyze: error: "), result.stderr
    assert message in lines[0]
    assert not out.exists()
