"""`gradflow analyze` end to end, as a user runs it: a subprocess, then open every output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import TINY, assert_user_error, gradflow

import gradflow as gf
from gradflow.configs import AnalysisConfig
from gradflow.models.build import build_model
from gradflow.pipeline import run_analysis
from gradflow.record import FRAME_COLUMNS
from gradflow.testing import assert_unchanged


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("analyze") / "report"
    result = gradflow(
        "analyze", "--model", "plain20", "--model", "resnet20", *TINY, "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    return out, result


def test_terminal_summary_answers_the_question(report):
    _, result = report
    lines = result.stdout.splitlines()
    assert "grad_log10_ratio" in lines[0] and "prod_log10_condition" in lines[0]
    verdicts = [line for line in lines if line.startswith(("plain20:", "resnet20:"))]
    assert len(verdicts) == 2
    assert all("from output to input" in line and "condition number" in line for line in verdicts)
    assert result.stderr == ""  # --quiet: no progress bars


def test_report_html_mentions_both_models_and_embeds_figures(report):
    out, _ = report
    html = (out / "report.html").read_text()
    assert "plain20" in html and "resnet20" in html
    assert html.count("data:image/png;base64,") == 5
    assert "synthetic" in html  # says plainly what data it was made on


def test_figures_load(report):
    out, _ = report
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert names == {
        "activation_grad_norm.png",
        "shortcut_grad_share.png",
        "signal_propagation.png",  # at init: not the flat Figure 7 panel
        "cumulative_spectra.png",
        "block_spectra.png",
    }
    for name in names:
        image = mpimg.imread(out / "figures" / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_frames_have_the_schema_and_finite_values(report):
    out, _ = report
    records = pd.read_parquet(out / "data" / "records.parquet")
    assert list(records.columns) == list(FRAME_COLUMNS)
    assert set(records["model"]) == {"plain20", "resnet20"}
    assert np.isfinite(records["value"]).all()
    grads = records[records["quantity"] == "activation_grad_norm"]
    assert sorted(grads["depth"].unique()) == list(range(10))  # input of block 1 + 9 outputs
    spectra = pd.read_parquet(out / "data" / "spectra.parquet")
    assert {"model", "depth", "block", "operator", "sample", "index", "sigma"} <= set(spectra)
    assert set(spectra["operator"]) == {"J_H", "I+J_F", "J_F", "prod"}
    assert np.isfinite(spectra["sigma"]).all() and (spectra["sigma"] >= 0).all()
    summary = pd.read_csv(out / "data" / "summary.csv")
    assert list(summary["model"]) == ["plain20", "resnet20"]
    assert summary["nonfinite"].isna().all()  # no site: every number is finite
    numbers = summary.drop(columns=["model", "prod_log10_condition", "nonfinite"])
    numbers = numbers.to_numpy(dtype=float)
    assert np.isfinite(numbers).all()
    assert not summary["prod_log10_condition"].isna().any()  # +inf when rank-deficient
    assert (summary["prod_depth"] == 9).all()
    for name in ("records", "spectra", "spectra_summary", "summary"):
        csv = pd.read_csv(out / "data" / f"{name}.csv")
        assert len(csv) == len(pd.read_parquet(out / "data" / f"{name}.parquet"))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["seed"] == 0 and meta["versions"]["torch"] == torch.__version__
    assert meta["data"]["synthetic"] is True and meta["wall_time_s"] > 0


def test_same_command_same_seed_writes_identical_data(report, tmp_path):
    out, _ = report
    again = tmp_path / "again"
    result = gradflow(
        "analyze", "--model", "plain20", "--model", "resnet20", *TINY, "--out", str(again)
    )
    assert result.returncode == 0, result.stderr
    for file in sorted((out / "data").iterdir()):
        assert file.read_bytes() == (again / "data" / file.name).read_bytes(), file.name


def test_default_out_is_a_new_folder_never_overwritten(tmp_path):
    args = ["analyze", "--model", "resnet8", *TINY[:-3], "--depths", "1", "--quiet"]
    first = gradflow(*args, cwd=tmp_path)
    second = gradflow(*args, cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["gradflow-report-resnet8", "gradflow-report-resnet8-2"]


def test_existing_out_needs_force(report):
    out, _ = report
    result = gradflow("analyze", "--model", "resnet8", *TINY, "--out", str(out))
    assert result.returncode == 2
    assert "earlier gradflow analysis report" in result.stderr and "--force" in result.stderr
    assert (out / "report.html").exists()  # the old report is still there


def test_unknown_model_names_the_closest(tmp_path):
    out = tmp_path / "out"
    result = gradflow("analyze", "--model", "resnt56", *TINY, "--out", str(out))
    assert_user_error(result, "unknown model 'resnt56'", "did you mean resnet56")
    assert not out.exists()  # no half-written report


def test_missing_and_corrupt_data_dirs(tmp_path):
    def analyze_on(data: str, data_dir: Path, *extra: str):
        return gradflow(
            "analyze", "--model", "resnet8", "--data", data, "--data-dir", str(data_dir),
            *TINY, *extra,
        )  # fmt: skip

    missing = analyze_on("fashion-mnist", tmp_path / "nowhere")
    assert_user_error(missing, str(tmp_path / "nowhere"), "dataset-fashion-mnist")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (corrupt / name).write_bytes(b"\x00\x00\x08\x03garbage")
    result = analyze_on("fashion-mnist", corrupt, "--out", str(tmp_path / "out"))
    assert_user_error(result, "train-images-idx3-ubyte")
    assert not (tmp_path / "out").exists()
    cifar = analyze_on("cifar10", corrupt)
    assert_user_error(cifar, "cifar-10-batches-py")


def test_file_factory_that_fails_to_import(tmp_path):
    broken = tmp_path / "broken_net.py"
    broken.write_text("raise RuntimeError('my bug')\n")
    result = gradflow("analyze", "--model", f"{broken}:build", *TINY)
    assert_user_error(result, "could not import", "my bug")


def test_file_factory_model_is_analysed(tmp_path):
    user = tmp_path / "user_net.py"
    user.write_text(
        "import gradflow as gf\n"
        "def build(num_classes=10, in_channels=3):\n"
        "    return gf.create_model('resnet8', num_classes=num_classes, in_channels=in_channels)\n"
    )
    out = tmp_path / "out"
    result = gradflow(
        "analyze",
        "--model",
        f"{user}:build",
        *TINY[:-3],
        "--depths",
        "1",
        "--quiet",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert f"{user}:build" in set(pd.read_csv(out / "data" / "summary.csv")["model"])


def test_checkpoint_that_does_not_match(tmp_path):
    checkpoint = tmp_path / "resnet20.pt"
    torch.save(gf.create_model("resnet20").state_dict(), checkpoint)
    result = gradflow("analyze", "--model", "resnet32", "--checkpoint", str(checkpoint), *TINY)
    assert_user_error(result, "does not match model resnet32")
    missing = gradflow(
        "analyze", "--model", "resnet20", "--checkpoint", str(tmp_path / "x.pt"), *TINY
    )
    assert_user_error(missing, "does not exist")


def test_help_documents_every_option_with_an_example():
    result = gradflow("analyze", "--help")
    assert result.returncode == 0
    options = "--model --data --data-dir --batch-size --samples --k --depths --seed --device "
    options += "--init --steps --checkpoint --out --force --threads --quiet"
    for option in options.split():
        assert option in result.stdout
    assert "gradflow analyze --model plain56 --model resnet56" in result.stdout


def test_device_that_is_not_there():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = gradflow("analyze", "--model", "resnet8", "--device", "cuda", *TINY)
    assert_user_error(result, "no CUDA device")


def test_api_analyses_at_init_and_after_steps_and_restores_global_state():
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    config = AnalysisConfig(
        ["resnet8"], batch_size=8, samples=1, k=2, depths="1,3", steps=3, progress=False, threads=1
    )
    result = run_analysis(config)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert list(result.summary["step"]) == [0, 3]
    assert set(result.records["step"]) == {0, 3} and set(result.spectra["step"]) == {0, 3}
    before, after = (
        result.records[
            (result.records["step"] == s) & (result.records["quantity"] == "weight_norm")
        ]
        for s in (0, 3)
    )
    assert not np.allclose(before["value"], after["value"])  # it did train in between
    assert [line.split(":")[0] for line in result.verdicts()] == ["resnet8", "resnet8 (step 3)"]
    assert {p["phase"] for p in result.meta["phase_seconds"]} == {"record", "spectra", "train"}


def test_api_takes_modules_with_labels_and_leaves_them_unchanged():
    # the weights analyze builds for the name: build_model with seed 0 for the synthetic set
    model = build_model("resnet8", options={"num_classes": 10, "in_channels": 3}, seed=0)
    options = dict(batch_size=8, samples=1, k=2, depths="1,3", progress=False)
    with assert_unchanged(model):
        result = gf.analyze([("mine", model), "resnet8"], **options)
    assert list(result.summary["model"]) == ["mine", "resnet8"]
    mine, named = (result.summary.iloc[[i]].drop(columns="model") for i in (0, 1))
    pd.testing.assert_frame_equal(
        mine.reset_index(drop=True), named.reset_index(drop=True), check_exact=True
    )
    twice = gf.analyze({"a": model, "b": model}, **options)
    assert list(twice.summary["model"]) == ["a", "b"]
    assert list(gf.analyze([model], **options).summary["model"]) == ["ResNet"]


def test_analysis_does_not_import_the_trainer():
    code = "import sys, gradflow.analyze; print('gradflow.train' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
