"""Shattered gradients and signal propagation at initialisation: plain vs ResNet 20/56/110.

Balduzzi et al. (2017): the gradients of a deep plain rectifier net at nearby inputs are
almost uncorrelated (white noise), while a ResNet's stay correlated, their correlation
decaying slowly with depth. Here: input gradients of a fixed random projection of the
logits at 128 points on a line through a test image, their correlation vs lag, and the lag
where it first drops below 1/e. Beside it, Brock, De and Smith's (2021) signal propagation
plot: channel variance and squared mean at every block boundary, branch variance, and the
share of the input gradient that reaches each residual block through its shortcut. Nothing
is trained.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from gradflow.evidence import shattered_gradients, shattering_summary, signal_propagation
from gradflow.evidence.figures import gradient_correlation_figure, signal_propagation_figure
from gradflow.report import Section

from .common import Experiment, compare_rows, parse_args, shown

MODELS = {"smoke": ("plain20", "resnet20", "plain56", "resnet56")}
DEFAULT_MODELS = tuple(f"{kind}{depth}" for depth in (20, 56, 110) for kind in ("plain", "resnet"))
SIGNAL_MODELS = ("plain56:he", "resnet56:he", "resnet56:zero_gamma")
LINE = {"smoke": dict(lines=1, points=24), "small": dict(lines=4, points=128)}
WHITE_NOISE = 0.05  # |r| below this: uncorrelated (1/sqrt(1024) = 0.03 for one pair)
RADIUS = 0.25  # the line spans t in [-0.25, 0.25] per-pixel data std units
BALDUZZI = (
    "Balduzzi et al. 2017: gradient correlations decay exponentially with depth in plain "
    "rectifier nets and sublinearly in ResNets with BN"
)
BROCK = (
    "Brock, De and Smith 2021: in BN ResNets the variance of the residual stream grows with "
    "depth within a stage; zero-gamma blocks start as the identity"
)


def _shattering(experiment: Experiment, x) -> tuple[pd.DataFrame, pd.DataFrame]:
    line = LINE.get(experiment.scale.name, LINE["small"])
    frames = []
    for model in MODELS.get(experiment.scale.name, DEFAULT_MODELS):
        experiment.log(f"{model}: gradients along {line['lines']} line(s)")
        initial = experiment.initial_model(model)
        frames.append(shattered_gradients(initial, x, radius=RADIUS, label=model,
                                          seed=experiment.args.seed, **line))  # fmt: skip
    frame = pd.concat(frames, ignore_index=True)
    return frame, shattering_summary(frame)


def _signal(experiment: Experiment, x, y) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames = []
    for entry in SIGNAL_MODELS:
        model, init = entry.split(":")
        frames.append(signal_propagation(experiment.initial_model(model, init), x, y,
                                         label=f"{model} {init}"))  # fmt: skip
    frame = pd.concat(frames, ignore_index=True)
    rows = []
    for label, part in frame.groupby("model", sort=False):
        variance = part[part.quantity == "channel_variance"].set_index("depth").value
        stage1 = part[(part.stage == 1) & (part.quantity == "channel_variance")].depth.max()
        share = part[part.quantity == "shortcut_grad_share"].value
        rows.append(
            {
                "model": label,
                "variance_at_input": variance[0],
                "variance_end_of_stage1": variance[stage1],
                "stage1_variance_growth": variance[stage1] / variance[0],
                "mean_shortcut_grad_share": share.mean() if len(share) else np.nan,
            }
        )
    return frame, pd.DataFrame(rows)


def _comparisons(summary: pd.DataFrame, signal: pd.DataFrame) -> list[str]:
    table = summary[summary.measure == "cosine"].set_index("model")
    depths = sorted({int(m.removeprefix("plain").removeprefix("resnet")) for m in table.index})
    lines = []
    for depth in depths:
        lines.append(compare_rows(
            table, f"plain{depth}", f"resnet{depth}", "lag1_correlation", verb="has",
            unit="", quantity="gradient correlation at lag 1", expected="lower", paper=BALDUZZI,
        ))  # fmt: skip
    for shallow, deep in itertools.pairwise(depths):
        for kind in ("plain", "resnet"):
            pair = table.loc[[f"{kind}{deep}", f"{kind}{shallow}"], "lag1_correlation"]
            if (pair.abs() < WHITE_NOISE).all():  # both shattered: their order is noise
                lines.append(
                    f"{kind}{deep} and {kind}{shallow} both have lag-1 gradient correlations "
                    f"at the white-noise level ({pair.iloc[0]:.3g} and {pair.iloc[1]:.3g}, "
                    f"|r| < {WHITE_NOISE}): fully shattered, as in the paper ({BALDUZZI})."
                )
                continue
            lines.append(compare_rows(
                table, f"{kind}{deep}", f"{kind}{shallow}", "lag1_correlation", verb="has",
                unit="", quantity="gradient correlation at lag 1", expected="lower",
                paper=BALDUZZI,
            ))  # fmt: skip
    deepest = depths[-1]
    drop = {
        kind: table.at[f"{kind}{depths[0]}", "lag1_correlation"]
        - table.at[f"{kind}{deepest}", "lag1_correlation"]
        for kind in ("plain", "resnet")
    }
    lines.append(
        f"From {depths[0]} to {deepest} layers the lag-1 correlation falls by {drop['plain']:.3f} "
        f"in the plain nets and by {drop['resnet']:.3f} in the ResNets: "
        + ("slower in the ResNets, as in the paper" if drop["resnet"] < drop["plain"]
           else "the ResNets' does not fall more slowly here") + f" ({BALDUZZI})."
    )  # fmt: skip
    sig = signal.set_index("model")
    lines += [
        compare_rows(sig, "resnet56 he", "plain56 he", "stage1_variance_growth", verb="has",
                     unit="", quantity="variance growth over stage 1", expected="higher",
                     paper=BROCK),
        compare_rows(sig, "resnet56 zero_gamma", "resnet56 he", "stage1_variance_growth",
                     verb="has", unit="", quantity="variance growth over stage 1",
                     expected="lower", paper=BROCK),
    ]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    experiment = Experiment(parse_args(__file__, __doc__.splitlines()[0], argv), "fig7")
    if experiment.args.plan:
        models = MODELS.get(experiment.scale.name, DEFAULT_MODELS)
        print(f"trains nothing: {', '.join(models)} at initialisation (a few minutes)")
        return
    x, y = experiment.measurement_batch()
    correlations, summary = _shattering(experiment, x)
    signal, signal_summary = _signal(experiment, x, y)
    line = LINE.get(experiment.scale.name, LINE["small"])
    sections = [
        Section(
            "Shattered gradients at initialisation",
            paragraphs=[
                f"For each of {line['lines']} probe test images x0 a line x(t) = x0 + t d, "
                f"{line['points']} points t in [-{RADIUS}, {RADIUS}], d a seeded Gaussian "
                "direction with unit RMS per pixel (t is in units of the data's per-pixel "
                "std). Output s(x) = u . logits for a fixed random unit vector u. cosine: "
                "mean over i of cos(g_i, g_{i+lag}) of the full input gradients g_i; "
                "directional: the autocorrelation of d/dt s(x(t)) = g_i . d. BN in eval "
                f"mode in a private copy whose statistics are those of the {len(x)}-image "
                "probe batch, so the points of a line do not mix through batch statistics. "
                "Nothing is trained: every net has the weights the trainer starts from.",
                "decorrelation_lag: the first lag (grid steps) where the mean correlation "
                "drops below 1/e (blank: not within max_lag); decorrelation_distance: the "
                "same in input-space distance |t_i - t_j| ||d||.",
            ],
            table=shown(summary),
            figures=[
                (
                    "gradient_correlation",
                    gradient_correlation_figure(correlations),
                    "Gradient correlation vs lag along a line of inputs, at init.",
                )
            ],
        ),
        Section(
            "Signal propagation at initialisation",
            paragraphs=[
                f"One probe batch of {len(x)} images, models in train mode (BN with batch "
                "statistics) as training starts. Statistics per channel over the batch and "
                "positions, averaged over channels. Shortcut share at residual block k: "
                "||g J_S|| / (||g J_S|| + ||g J_F||), g = dL/du the gradient at the sum u = "
                "F(x) + S(x) before the block's ReLU. Option-A shortcuts zero-pad channels at "
                "stage transitions, which halves the average channel variance there.",
            ],
            table=shown(signal_summary),
            figures=[
                (
                    "signal_propagation",
                    signal_propagation_figure(signal),
                    "Signal propagation plot at init (Brock et al. 2021).",
                )
            ],
        ),
    ]
    experiment.write_report(
        "Shattered gradients and signal propagation at initialisation",
        sections,
        {
            "correlations": correlations,
            "summary": summary,
            "signal": signal,
            "signal_summary": signal_summary,
        },
        _comparisons(summary, signal_summary),
    )
