"""The verdict (gradflow.verdict) on hand-made frames with known answers, pinned on the seeded
plain56/resnet56 pair, and --whatif end to end (a subprocess on plain20 and user model files)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import gradflow as gf
from gradflow import verdict as gv
from gradflow.configs import AnalysisConfig
from gradflow.errors import ParameterError
from gradflow.summaries import SUMMARY_COLUMNS
from gradflow.testing import assert_unchanged

# ----------------------------------------------------------------------- hand-made frames


def norms(model: str, values, layers=None) -> pd.DataFrame:
    """Records holding activation-gradient norms at depths 0..L (0: block 1's input)."""
    layers = layers or ["stem"] + [f"b{k}" for k in range(1, len(values))]
    return pd.DataFrame(
        {
            "model": model,
            "step": 0,
            "layer": layers,
            "depth": range(len(values)),
            "quantity": "activation_grad_norm",
            "value": np.asarray(values, dtype=float),
        }
    )


def block_rows(model: str, operator: str, largest: dict[int, float]) -> pd.DataFrame:
    """A spectra summary with one sample per depth: ``operator``'s largest singular value."""
    return pd.DataFrame(
        {
            "model": model,
            "step": 0,
            "operator": operator,
            "depth": list(largest),
            "sample": 0,
            "largest": list(largest.values()),
        }
    )


def sentence(records: pd.DataFrame, spectra: pd.DataFrame | None = None) -> pd.Series:
    frame = gv.verdict_frame(records, pd.DataFrame() if spectra is None else spectra)
    assert len(frame) == 1
    return frame.iloc[0]


def test_diagnosis_thresholds_at_their_edges():
    below, above = np.nextafter(gv.PRESERVED_LOG10, 0), gv.PRESERVED_LOG10
    assert gv.diagnosis(below) == gv.diagnosis(-below) == "preserved"
    assert gv.diagnosis(above) == "growing" and gv.diagnosis(-above) == "shrinking"
    edge = gv.EXPLODING_LOG10
    assert gv.diagnosis(np.nextafter(edge, 0)) == "growing"
    assert gv.diagnosis(edge) == "exploding" and gv.diagnosis(-edge) == "vanishing"
    for value in (float("nan"), float("inf"), float("-inf")):
        assert gv.diagnosis(value) == "non-finite"


def test_exploding_spread_over_all_blocks():
    # 10 blocks, each multiplying the gradient by 10^0.25 on the way to the input
    row = sentence(norms("net", 10.0 ** (-0.25 * np.arange(11))))
    assert row["diagnosis"] == "exploding"
    assert row["grad_log10_ratio"] == pytest.approx(2.5)
    assert row["verdict"] == (
        "net: exploding gradient: it grows 10^2.5x from output to input at init, spread over "
        "all 10 blocks (~10^0.25 each). Cumulative Jacobian spectrum not measured."
    )


def test_concentrated_growth_names_the_blocks_and_their_jacobian():
    # all the growth (10^3) in block 2; J_H measured at blocks 2 (largest 8) and 7 (largest 1)
    values = [1e3, 1e3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    spectra = block_rows("net", "J_H", {2: 8.0, 7: 1.0})
    row = sentence(norms("net", values), spectra)
    assert row["diagnosis"] == "exploding"
    assert (row["growth_blocks"], row["growth_share"]) == ("block 2", pytest.approx(1.0))
    assert row["block_largest"] == pytest.approx(8.0)
    assert row["verdict"].startswith(
        "net: exploding gradient: it grows 10^3.0x from output to input at init; 100% of it "
        "in block 2 (b2), where each block's J_H has largest singular value ~8. "
    )


def test_growth_run_is_the_shortest_window_carrying_the_share():
    growth = np.array([0.1, 0.1, 1.0, 0.9, 0.1, 0.1, -0.1, 0.1, 0.1, 0.1])
    assert gv.growth_run(growth) == (2, 3)  # 1.9 of 2.4: >= 2/3
    assert gv.growth_run(-growth) == (2, 3)  # shrinking: the same blocks
    assert gv.growth_run(np.full(9, 0.2)) == (0, 5)  # uniform: 6 of 9 blocks


def test_vanishing_and_preserved_words():
    vanishing = sentence(norms("deep", 10.0 ** (0.5 * np.arange(6))))
    assert vanishing["diagnosis"] == "vanishing"
    assert vanishing["verdict"].startswith(
        "deep: vanishing gradient: it shrinks 10^2.5x from output to input at init, spread"
    )
    spectra = block_rows("flat", "I+J_F", {1: 1.0, 2: 1.2})
    preserved = sentence(norms("flat", [1.0, 1.1, 1.3]), spectra)
    assert preserved["diagnosis"] == "preserved"
    assert preserved["verdict"].startswith(
        "flat: gradient preserved: 10^-0.11 from output to input at init; each block's I+J_F "
        "has largest singular value ~1.1."
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_norms_are_said_non_finite_with_where_never_diagnosed(bad):
    values = 10.0 ** (-0.3 * np.arange(11))
    values[[5, 6]] = bad
    row = sentence(norms("broken", values))
    assert row["diagnosis"] == "non-finite"
    assert row["verdict"].startswith(
        "broken: non-finite gradient: the activation-gradient norm is not finite at 2 of 11 "
        "block boundaries, first (going from the output to the input) at b6 (depth 6)"
    )
    for word in ("exploding", "vanishing", "preserved", "grows", "shrinks", "spread"):
        assert word not in row["verdict"]


def test_zero_norms_leave_no_ratio():
    row = sentence(norms("fixup", [0.0, 0.0, 0.0]))
    assert row["diagnosis"] == "non-finite"
    assert "norm is zero at 3 of 3 block boundaries" in row["verdict"]


def test_non_finite_cumulative_spectrum_is_said_with_its_first_block():
    records = norms("net", [2.0, 1.5, 1.0, 1.0])
    prod = block_rows("net", "prod", {1: 3.0, 2: float("nan"), 3: float("nan")})
    prod = prod.assign(smallest=1.0, mean_sq_estimate=1.0, converged=True, has_bottom=True)
    text = sentence(records, prod)["verdict"]
    assert text.endswith("prod J's singular values are not finite, first at block 2.")


def test_step_and_checkpoint_wording():
    records = pd.concat([norms("m", [2.0, 1.0]), norms("m", [1.0, 1.0]).assign(step=5)])
    first, trained = gv.verdict_frame(records, pd.DataFrame())["verdict"]
    assert first.startswith("m: gradient preserved: 10^+0.30 from output to input at init")
    assert trained.startswith("m (step 5): gradient preserved: 10^+0.00 from output to input.")
    loaded = gv.verdict_frame(norms("m", [2.0, 1.0]), pd.DataFrame(), initial=False)
    assert "at init" not in loaded["verdict"][0]


def test_summary_display_fits_the_page():
    summary = pd.DataFrame(
        [["a", 0, 9, 1.4, 0.99, 1.01, 9, 199.0, 21.9, 1.1, 2.25, False]],
        columns=SUMMARY_COLUMNS,
    )
    verdicts = pd.DataFrame({"diagnosis": ["growing"]})
    shown = gv.summary_display(summary, verdicts)
    assert list(shown.columns) == [
        "model",
        "blocks",
        "grad_log10_ratio",
        "diagnosis",
        "response_std",
        "prod_depth",
        "prod_largest",
        "prod_rms",
        "prod_log10_condition",
    ]
    assert shown.iloc[0]["response_std"] == "0.99-1.01"
    assert shown.iloc[0]["prod_log10_condition"] == ">=2.25"  # a lower bound, marked


# ------------------------------------------------------------ pinned: plain56 vs resnet56


@pytest.fixture(scope="module")
def pinned_pair() -> pd.DataFrame:
    x, y = gf.load_dataset("synthetic", size=256).batch(32, seed=0)
    frames = []
    for name in ("plain56", "resnet56"):
        torch.manual_seed(0)
        model = gf.create_model(name)
        frame = gf.record(model, x, y, label=name, probes=["activation_grad_norm"])
        frames.append(frame.assign(step=0))
    return pd.concat(frames, ignore_index=True)


def test_pinned_sentences_of_plain56_and_resnet56(pinned_pair):
    frame = gv.verdict_frame(pinned_pair, pd.DataFrame())
    plain, residual = frame["verdict"]
    # the growth rates of test_pinned_headline (10^4.082 and 10^1.553 over 27 blocks)
    assert plain.startswith(
        "plain56: exploding gradient: it grows 10^4.1x from output to input at init, spread "
        "over all 27 blocks (~10^0.15 each)."
    )
    # the residual net's growth sits in its first stage: 69% of it in blocks 1-9
    assert residual.startswith(
        "resnet56: growing gradient: it grows 10^1.6x from output to input at init; 69% of it "
        "in blocks 1-9 (stage1.block1 to stage1.block9)."
    )
    assert list(frame["diagnosis"]) == ["exploding", "growing"]


# ----------------------------------------------------------------------------- --whatif

USER_MODELS = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width, residual):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.residual = residual

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(x + out if self.residual else out)


class Net(nn.Module):
    def __init__(self, residual, depth=9, width=4):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(width, residual) for _ in range(depth)])
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def residual():
    return Net(True)


def plain():
    return Net(False)
"""
TINY = ["--batch-size", "8", "--samples", "1", "--k", "1", "--depths", "9", "--quiet"]


@pytest.fixture(scope="module")
def whatif_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("whatif")
    (folder / "nets.py").write_text(textwrap.dedent(USER_MODELS))
    models = ["plain20", "nets.py:residual", "nets.py:plain"]
    args = [a for m in models for a in ("--model", m)]
    result = subprocess.run(
        [sys.executable, "-m", "gradflow", "analyze", *args, *TINY, "--whatif", "--out", "out"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    return folder / "out", result


def test_whatif_frame_of_plain20_and_its_fix(whatif_run):
    out, _ = whatif_run
    frame = pd.read_csv(out / "data" / "whatif.csv")
    plain = frame[frame["model"] == "plain20"].set_index("variant")
    assert list(plain.index) == ["as given", "identity shortcuts", "zero-gamma", "pre-activation"]
    assert list(plain["net"]) == ["plain20", "resnet20", "resnet20 zero-gamma", "preresnet20"]
    given = plain.loc["as given", "grad_log10_ratio"]
    # the shortcuts shrink the growth; zero-gamma blocks start as the identity: preserved
    assert abs(plain.loc["identity shortcuts", "grad_log10_ratio"]) < given - 0.3
    assert plain.loc["zero-gamma", "diagnosis"] == "preserved"
    assert plain.loc["zero-gamma", "prod_largest"] < plain.loc["as given", "prod_largest"] / 10
    assert (plain["prod_depth"] == 9).all() and frame["verdict"].str.len().min() > 40


def test_whatif_user_models_zero_gamma_or_a_one_line_note(whatif_run):
    out, result = whatif_run
    frame = pd.read_csv(out / "data" / "whatif.csv")
    user = frame[frame["model"] == "nets.py:residual"].set_index("variant")
    assert list(user["net"]) == ["nets.py:residual", "nets.py:residual zero-gamma"]
    # each block is relu(x + 0): going backward, a ReLU drops the gradient once, where the
    # activations are 0 (the signed stem output's negative half); no growth is left
    given, zero = user.loc["as given"], user.loc["zero-gamma"]
    assert zero["diagnosis"] == "preserved" and given["diagnosis"] != "preserved"
    assert abs(zero["grad_log10_ratio"]) < abs(given["grad_log10_ratio"]) - 0.3
    assert "nets.py:plain" not in set(frame["model"])  # no residual block: no counterfactual
    notes = [line for line in result.stdout.splitlines() if line.startswith("nets.py:plain: no")]
    assert notes == [
        "nets.py:plain: no counterfactual: gradflow.structure found no residual block "
        "(shortcuts are added only to zoo nets, by name)"
    ]
    assert "What would fix it" in result.stdout
    assert "plain20: zero-gamma (resnet20 zero-gamma) takes the gradient log-ratio" in (
        result.stdout
    )


def test_report_has_the_whatif_section_and_a_summary_that_fits(whatif_run):
    out, _ = whatif_run
    html = (out / "report.html").read_text()
    assert "<h2>What would fix it</h2>" in html
    assert ".table-scroll { max-width: 100%; overflow-x: auto; }" in html
    summary = html.split("<h2>Summary</h2>")[1].split("<h2>")[0]
    assert '<div class="table-scroll"><table' in summary
    header = summary.split("<thead>")[1].split("</thead>")[0]
    assert header.count("<th>") <= 10  # was 12 columns, cut off at the right edge
    assert "grad_<wbr>log10_<wbr>ratio" in header  # long headers may wrap


def test_whatif_never_changes_a_user_model():
    torch.manual_seed(0)
    model = gf.create_model("resnet8")
    model.register_forward_hook(lambda m, a, o: None)
    options = dict(batch_size=4, samples=1, k=1, depths="3", progress=False, whatif=True)
    with assert_unchanged(model):
        result = gf.analyze([("mine", model)], **options)
    assert list(result.whatif["net"]) == ["mine", "mine zero-gamma"]
    assert result.whatif["grad_log10_ratio"].notna().all()


def test_whatif_with_a_checkpoint_is_refused_before_work():
    config = AnalysisConfig(["plain20"], checkpoint="x.pt", whatif=True)
    with pytest.raises(ParameterError, match="whatif compares nets at init"):
        config.validate()


def test_zoo_twins_by_name():
    from gradflow.whatif import zoo_twins

    assert zoo_twins("resnet56", None) == (
        [("zero-gamma", "resnet56", "zero_gamma"), ("pre-activation", "preresnet56", "he")],
        None,
    )
    twins, note = zoo_twins("plain18", None)
    assert [t[0] for t in twins] == ["identity shortcuts", "zero-gamma"]
    assert note.startswith("plain18: not built: pre-activation (no preresnet18")
    assert zoo_twins("preresnet20", "zero_gamma") == (
        [],
        "preresnet20: no counterfactual: it has identity shortcuts, zero-gamma and "
        "pre-activation already",
    )
