"""The experiment scripts at smoke scale: reports, figures, CSVs, run-cache reuse and resume.

Every script runs once as a subprocess (module fixture, two at a time on the 2 cores:
fig1 -> fig6 -> fig7 -> jacobian share one run cache, as they would for reports/, while
fig4 -> zero_gamma share another); the tests then open what they wrote.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from gradflow.experiments import EXPERIMENTS as NAMES
from gradflow.experiments import common

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

CHAINS = (
    [
        "fig1_degradation",
        "fig6_cifar_depth",
        "fig7_response_std",
        "jacobian_spectra",
        "lesion_study",
    ],
    ["fig4_imagenet_style", "zero_gamma_ablation", "shattered_gradients"],
)
SCRIPTS = [*CHAINS[0], *CHAINS[1]]
HISTORY = (["model", "step", "split", "quantity", "value"], ["step", "value"])
FINAL = (
    ["model", "params", "train_error", "test_error", "best_test_error"],
    ["params", "train_error", "test_error", "best_test_error"],
)
RECORD = ["model", "step", "layer", "depth", "stage", "block", "kind", "quantity", "value"]
# script -> {csv name: (columns it must have, columns that must be finite)}
CSVS = {
    "fig1_degradation": {"history": HISTORY, "final_errors": FINAL},
    "fig6_cifar_depth": {"history": HISTORY, "final_errors": FINAL},
    "fig4_imagenet_style": {
        "history": HISTORY,
        "final_errors": ([*FINAL[0], "paper_top1_imagenet"], FINAL[1] + ["paper_top1_imagenet"]),
    },
    "fig7_response_std": {
        "responses": (RECORD, ["depth", "value"]),
        "summary": (["model", "layers", "mean_std", "median_std", "max_std"], ["mean_std"]),
    },
    "zero_gamma_ablation": {
        "init_records": (RECORD, ["depth"]),  # fixup's gradient is exactly 0 at init: finite
        "summary": (
            [
                "model",
                "depth",
                "largest",
                "smallest",
                "log10_condition",
                "grad_log10_ratio",
                "train_error",
                "test_error",
            ],
            ["largest", "smallest", "train_error", "test_error"],
        ),
        "history": HISTORY,
    },
    "jacobian_spectra": {
        "spectra_summary": (
            ["model", "operator", "depth", "sample", "largest", "smallest"],
            ["largest", "smallest"],
        ),
        "summary": (
            ["model", "step", "depth", "largest", "log10_condition", "grad_log10_ratio"],
            ["largest", "grad_log10_ratio"],
        ),
        "records": (RECORD, ["value"]),
    },
    "lesion_study": {
        "lesions": (
            ["model", "k", "draw", "removed", "layer", "depth", "kind", "error"],
            ["k", "error"],
        ),
        "summary": (
            ["model", "intact_error", "mean_single_lesion_error", "mean_increase"],
            ["intact_error", "mean_single_lesion_error", "mean_increase"],
        ),
    },
    "shattered_gradients": {
        "correlations": (
            ["model", "line", "measure", "lag", "distance", "value"],
            ["lag", "distance"],
        ),
        "summary": (
            ["model", "measure", "lag1_correlation", "decorrelation_lag"],
            ["lag1_correlation"],
        ),
        "signal": (RECORD, ["depth"]),
    },
}
MODELS = {
    "fig1_degradation": ["plain20", "plain56"],
    "fig6_cifar_depth": ["plain20", "plain56", "resnet20", "resnet56"],
    "fig7_response_std": ["plain20", "plain56", "resnet20", "resnet56", "resnet110"],
    "zero_gamma_ablation": ["resnet56 zero_gamma", "resnet56 he", "resnet56 fixup"],
    "jacobian_spectra": ["plain56", "resnet56"],
    "fig4_imagenet_style": ["plain18", "plain34", "resnet18", "resnet34"],
    "lesion_study": ["plain20", "resnet20", "plain56", "resnet56"],
    "shattered_gradients": ["plain20", "resnet56", "resnet56 zero_gamma"],
}


def _run(script: str, out: Path, cache: Path) -> subprocess.CompletedProcess:
    # the first chain runs the wrapper scripts in experiments/, the second the CLI
    launch = (
        [str(EXPERIMENTS / f"{script}.py")]
        if script in CHAINS[0]
        else ["-m", "gradflow", "reproduce", script]
    )
    command = [
        sys.executable,
        *launch,
        "--scale",
        "smoke",
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--quiet",
    ]
    # a hang guard, not a speed test: under pytest -n 2 a script shares the cores with the
    # other worker and its own chain twin
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)


def _snapshot(cache: Path) -> dict[str, int]:
    """Cache folder -> mtime of its finished-run marker (0 if unfinished)."""
    return {
        d.name: (d / common.DONE).stat().st_mtime_ns if (d / common.DONE).exists() else 0
        for d in cache.iterdir()
    }


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Iterator[dict]:
    """Run every script once at smoke scale; yield out dirs, results, cache snapshots."""
    root = tmp_path_factory.mktemp("experiments")
    outs = {script: root / script for script in SCRIPTS}
    snapshots, done = {}, {}

    def chain(scripts: list[str], cache: Path) -> None:
        for script in scripts:
            done[script] = _run(script, outs[script], cache)
            snapshots[script] = _snapshot(cache) if cache.exists() else {}

    caches = [root / f"cache{i}" for i in range(len(CHAINS))]
    with ThreadPoolExecutor(2) as pool:  # two processes at once: the machine has 2 cores
        for job in [pool.submit(chain, *pair) for pair in zip(CHAINS, caches, strict=True)]:
            job.result()
    yield {"outs": outs, "done": done, "snapshots": snapshots, "caches": caches}
    for cache in caches:  # trained weights of 22 runs: no need to keep them in /tmp
        shutil.rmtree(cache, ignore_errors=True)


# the first of these sets the smoke fixture up: 8 scripts, ~160 s on 2 idle cores, and it
# shares them with the other pytest -n 2 worker (pyproject's 600 s would cut it when loaded)
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_writes_a_report_with_figures_tables_and_the_paper_comparison(smoke, script):
    done = smoke["done"][script]
    assert done.returncode == 0, done.stderr[-3000:]
    out = smoke["outs"][script]
    readme = (out / "README.md").read_text()
    for model in MODELS[script]:
        assert model in readme
    comparison = readme.split("## Compared with the paper", 1)[1].split("\n## ", 1)[0]
    verdicts = ("as in the paper", "not reproduced", "as expected", "does not hold")
    assert any(v in comparison for v in verdicts), comparison
    assert "not real data" in readme  # smoke runs on the synthetic set: it must say so
    meta = json.loads((out / "meta.json").read_text())
    assert meta["command"].startswith(f"python experiments/{script}.py --scale smoke")
    assert meta["scale"]["name"] == "smoke" and meta["versions"]["torch"] == torch.__version__
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs
    for png in pngs:
        assert f"figures/{png.name}" in readme  # inline in the README
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 200 and image.std() > 0
    for name, (columns, finite) in CSVS[script].items():
        frame = pd.read_csv(out / "data" / f"{name}.csv")
        assert set(columns) <= set(frame.columns), name
        assert len(frame) and np.isfinite(frame[finite].to_numpy(float)).all(), name
    runs_csv = out / "data" / "runs.csv"  # shattered_gradients trains nothing: no rows
    runs = pd.read_csv(runs_csv) if runs_csv.stat().st_size > 1 else pd.DataFrame({"status": []})
    assert set(runs.status) <= {"trained", "reused"}


def _comparison(smoke, script: str) -> str:
    readme = (smoke["outs"][script] / "README.md").read_text()
    return readme.split("## Compared with the paper", 1)[1].split("\n## ", 1)[0]


def _sentence(comparison: str, start: str) -> str:
    found = [p for p in comparison.split("\n\n") if p.startswith(start)]
    assert len(found) == 1, (start, comparison)
    return found[0]


@pytest.mark.parametrize("model", ["resnet20", "resnet56"])
def test_zero_gamma_at_init_starts_as_the_identity_at_any_scale(smoke, model):
    # measured before any training step: the verdict cannot depend on the smoke budget
    comparison = _comparison(smoke, "zero_gamma_ablation")
    for quantity in ("largest singular value of prod", "|log10 gradient-norm ratio|"):
        line = _sentence(comparison, f"{model} zero_gamma starts with a lower {quantity}")
        assert f"than {model} he (" in line and ": as in the paper (" in line, line
    summary = pd.read_csv(smoke["outs"]["zero_gamma_ablation"] / "data" / "summary.csv")
    table = summary.set_index("model")
    zero, he = table.loc[f"{model} zero_gamma"], table.loc[f"{model} he"]
    assert zero.largest < he.largest / 4  # identity blocks: the product is the stem's
    assert abs(zero.grad_log10_ratio) < abs(he.grad_log10_ratio)
    assert np.isnan(table.loc[f"{model} fixup"].grad_log10_ratio)  # zero classifier: no signal
    assert "fixup zeroes the classifier at initialisation" in comparison


def test_jacobian_spread_at_init_is_higher_plain_than_residual(smoke):
    comparison = _comparison(smoke, "jacobian_spectra")
    line = _sentence(comparison, "plain56 has at initialisation a higher spread log10(largest")
    assert "than resnet56 (" in line and ": as expected (" in line, line
    summary = pd.read_csv(smoke["outs"]["jacobian_spectra"] / "data" / "summary.csv")
    at_init = summary[summary.step == 0].set_index("model")
    assert at_init.loc["plain56", "log10_spread"] > at_init.loc["resnet56", "log10_spread"]
    # the backward signal at init: the gradient grows far more towards the input when plain
    ratio = at_init.grad_log10_ratio
    assert ratio["plain56"] > ratio["resnet56"] + 1.0, ratio


def test_fig7_reuses_fig6_runs_instead_of_training_again(smoke):
    before, after = smoke["snapshots"]["fig6_cifar_depth"], smoke["snapshots"]["fig7_response_std"]
    fig6 = set(common.SCALES["smoke"].models["fig6"])
    fig7 = common.SCALES["smoke"].models["fig7"]
    new = set(after) - set(before)
    assert {name.split("-")[0] for name in new} == set(fig7) - fig6  # only resnet110 is new
    assert all(after[name] == stamp for name, stamp in before.items())  # nothing retrained
    runs = pd.read_csv(smoke["outs"]["fig7_response_std"] / "data" / "runs.csv")
    status = runs.set_index("model").status
    assert (status[[m for m in fig7 if m in fig6]] == "reused").all()
    assert status["resnet110"] == "trained"
    # fig6 itself reused fig1's two plain nets
    fig6_runs = pd.read_csv(smoke["outs"]["fig6_cifar_depth"] / "data" / "runs.csv")
    assert fig6_runs.set_index("model").status[["plain20", "plain56"]].eq("reused").all()


TINY = dict(
    model="resnet8",
    synthetic_size=64,
    synthetic_image_size=8,
    batch_size=16,
    iterations=6,
    eval_every=2,
    record_every=3,
    checkpoint_every=2,
    progress=False,
)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on 2 shared cores: one thread is fastest
    yield
    torch.set_num_threads(threads)


def test_interrupted_cached_run_resumes_and_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch, one_thread
):
    config = common.TrainConfig(**TINY)
    reference = common.cached_run(config, tmp_path / "reference")

    # the module, not gradflow.train the function that gradflow/__init__ may export
    trainer = importlib.import_module("gradflow.train")
    saved = trainer.save_checkpoint

    def killed_after_first_checkpoint(path, state):
        saved(path, state)
        raise KeyboardInterrupt  # as if the run were killed right after writing it

    monkeypatch.setattr(trainer, "save_checkpoint", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        common.cached_run(config, tmp_path / "cache")
    monkeypatch.setattr(trainer, "save_checkpoint", saved)
    folder = common.run_dir(config, tmp_path / "cache")
    assert (folder / "checkpoint.pt").exists() and not (folder / common.DONE).exists()

    resumed = common.cached_run(config, tmp_path / "cache")
    assert resumed.meta["resumed_from_iteration"] == 2 and not resumed.meta["cache"]["reused"]
    assert not (folder / "checkpoint.pt").exists() and (folder / "final.pt").exists()
    pd.testing.assert_frame_equal(resumed.history, reference.history)  # bit-exact resume
    loaded = common.cached_run(replace(config, label="again"), tmp_path / "cache")
    assert loaded.meta["cache"]["reused"] and set(loaded.history.model) == {"again"}
    pd.testing.assert_frame_equal(
        loaded.history.assign(model="resnet8"), reference.history, check_dtype=False
    )
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_run_key_ignores_where_and_how_a_run_goes_but_not_what_it_computes(tmp_path):
    config = common.TrainConfig(**TINY)
    same = replace(config, progress=True, out_dir="x", device="cpu", label="other", resume=True)
    assert common.run_dir(same, tmp_path) == common.run_dir(config, tmp_path)
    for change in (dict(iterations=7), dict(seed=1), dict(init="zero_gamma"), dict(lr=0.05)):
        assert common.run_dir(replace(config, **change), tmp_path) != common.run_dir(
            config, tmp_path
        ), change
    assert common.run_dir(config, tmp_path).name.startswith("resnet8-he-")


def test_a_missing_data_directory_is_a_clear_error_with_exit_code_2(tmp_path, capsys):
    from gradflow.experiments import fig1_degradation

    missing = tmp_path / "no-such-dir"
    argv = [
        "--scale",
        "smoke",
        "--data",
        "fashion-mnist",
        "--data-dir",
        str(missing),
        "--out",
        str(tmp_path / "out"),
        "--cache",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    assert common.entry(fig1_degradation.main, argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(missing) in error
    assert not (tmp_path / "out").exists()


def test_a_diverged_run_is_remembered_and_not_trained_again(tmp_path, monkeypatch, one_thread):
    config = common.TrainConfig(**{**TINY, "lr": 1e8, "record_every": 0})  # NaN within 2 steps
    with pytest.raises(common.RunFailed, match="diverged"):
        common.cached_run(config, tmp_path)
    assert (common.run_dir(config, tmp_path) / "failed.json").exists()
    trainer = importlib.import_module("gradflow.train")
    monkeypatch.setattr(trainer, "_train", lambda *a: pytest.fail("trained a failed run again"))
    with pytest.raises(common.RunFailed, match="diverged"):
        common.cached_run(config, tmp_path)


@pytest.mark.parametrize("scale", ["smoke", "small", "full"])
def test_every_scale_preset_names_real_models_inits_and_valid_settings(scale, one_thread):
    # one_thread restores torch's thread count, which Experiment sets from the preset
    from gradflow.models import get_model_info

    preset = common.SCALES[scale]
    assert set(preset.models) == {
        "fig1", "fig6", "fig4", "fig7", "zero_gamma", "jacobian", "hessian", "seed_spread"
    }  # fmt: skip
    args = common.parse_args("fig6_cifar_depth.py", "", ["--scale", scale, "--quiet"])
    for key in preset.models:
        experiment = common.Experiment(args, key)
        for model, init in experiment.models():
            get_model_info(model)  # raises for an unknown name
            assert init in common.INITS
            config = experiment.config(model, init)
            config.validate()
            assert config.eval_every * preset.evaluations <= config.iterations
            assert (config.warmup_iterations > 0) == (model == "resnet110")
            budget = preset.imagenet_iterations if key == "fig4" else preset.iterations
            assert config.iterations == budget
    # runs shared between scripts must be the same config: fig7 reuses fig6, zero_gamma fig7
    assert set(preset.models["fig7"]) - {"resnet110"} <= set(preset.models["fig6"])
    assert "resnet56:he" in preset.models["zero_gamma"] or scale == "smoke"
    # the Hessian report measures jacobian's runs (the same cached training runs)
    assert preset.models["hessian"] == preset.models["jacobian"] or scale == "smoke"
    if scale == "full":
        assert "resnet110" in preset.models["fig6"] and preset.iterations == 64_000
        assert preset.val_size == 5000 and preset.data == "cifar10"
    if scale == "small":
        assert preset.data == "fashion-mnist" and preset.batch_size == 128
        assert experiment.config("plain20").pad_to == 32


def test_plan_lists_the_runs_and_an_estimate_without_training(tmp_path, capsys, one_thread):
    from gradflow.experiments import fig6_cifar_depth

    argv = ["--scale", "small", "--plan", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert common.entry(fig6_cifar_depth.main, argv) == 0
    printed = capsys.readouterr().out
    for model in common.SCALES["small"].models["fig6"]:
        assert model in printed
    # 8 nets x (300 steps + 5 passes over 10,000 test images), from STEP_SECONDS
    steps = sum(common.STEP_SECONDS[m][0] for m in common.SCALES["small"].models["fig6"])
    evals = sum(common.STEP_SECONDS[m][1] for m in common.SCALES["small"].models["fig6"])
    assert f"{(300 * steps + 5 * 20 * evals) / 60:.0f} min from scratch" in printed
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_training_curves_figure_draws_thin_train_and_bold_test_lines_coloured_by_depth():
    from gradflow.report import training_curves_figure

    rows = [
        {"model": model, "step": step, "split": split, "quantity": quantity, "value": value}
        for model, offset in (("plain20", 0), ("plain56", 5), ("resnet20", 1), ("resnet56", 2))
        for step in (10, 20, 30)
        for split in ("train", "test")
        for quantity, value in (("error", 50 - step + offset + (split == "test")), ("lr", 0.1))
    ]
    history = pd.DataFrame(rows)
    panels = {"plain": ["plain20", "plain56"], "residual": ["resnet20", "resnet56"]}
    fig = training_curves_figure(history, panels)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["plain", "residual"]
    for ax, models in zip(axes, panels.values(), strict=True):
        lines = ax.get_lines()
        assert len(lines) == 2 * len(models)  # train + test per model, no lr
        for line, (model, split) in zip(lines, [(m, s) for m in models for s in ("train", "test")],
                                        strict=True):  # fmt: skip
            expected = history[(history.model == model) & (history.split == split)
                               & (history.quantity == "error")]  # fmt: skip
            assert list(line.get_xdata()) == [10, 20, 30]
            assert list(line.get_ydata()) == expected.value.tolist()
            assert line.get_linewidth() == (0.9 if split == "train" else 2.2)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == models
    # the i-th model of each panel shares its colour: plain20 with resnet20
    assert axes[0].get_lines()[0].get_color() == axes[1].get_lines()[0].get_color()
    assert axes[0].get_lines()[0].get_color() != axes[0].get_lines()[2].get_color()
    plt.close(fig)


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "gradflow", "reproduce", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_reproduce_lists_names_and_rejects_unknown_or_ambiguous_ones(tmp_path):
    listing = _cli("--list")
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == list(NAMES)
    assert "Figure 1" in listing.stdout
    assert sorted(NAMES) == sorted(p.stem for p in EXPERIMENTS.glob("*.py"))  # one wrapper each
    unknown = _cli("fig9")
    assert unknown.returncode == 2 and "unknown experiment 'fig9'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    ambiguous = _cli("fig")
    assert ambiguous.returncode == 2 and "could be fig1_degradation or" in ambiguous.stderr
    plan = _cli("fig1", "--scale", "smoke", "--plan", "--cache", str(tmp_path))
    assert plan.returncode == 0, plan.stderr
    assert "plain20" in plan.stdout and "plain56" in plan.stdout
    assert not (tmp_path / "reports").exists()


def test_shattered_gradients_at_smoke_scale_find_the_deep_plain_net_shattered(smoke):
    summary = pd.read_csv(smoke["outs"]["shattered_gradients"] / "data" / "summary.csv")
    lag1 = summary[summary.measure == "cosine"].set_index("model").lag1_correlation
    assert abs(lag1["plain56"]) < 0.2 < 0.5 < lag1["resnet56"]
    assert lag1["plain56"] < lag1["plain20"] and lag1["resnet56"] < lag1["resnet20"]
    signal = pd.read_csv(smoke["outs"]["shattered_gradients"] / "data" / "signal.csv")
    zero = signal[(signal.model == "resnet56 zero_gamma") & (signal.quantity == "branch_grad_norm")]
    assert len(zero) == 27 and (zero.value == 0).all()


def test_lesion_study_at_smoke_scale_reuses_the_runs_and_lesions_every_removable_block(smoke):
    lesions = pd.read_csv(smoke["outs"]["lesion_study"] / "data" / "lesions.csv")
    single = lesions[lesions.k == 1].groupby("model").size()
    assert single.to_dict() == {"plain20": 7, "plain56": 25, "resnet20": 9, "resnet56": 27}
    runs = pd.read_csv(smoke["outs"]["lesion_study"] / "data" / "runs.csv")
    assert (runs.status == "reused").all() and len(runs) == 4
