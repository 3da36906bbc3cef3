"""Lesion study (Veit, Wilber and Belongie 2016): trained plain and ResNets with blocks removed.

Each block of a trained plain-20/56 and ResNet-20/56 (the run cache's small-scale runs, shared
with jacobian_spectra) is removed at test time in turn, then k random blocks together.
Removing a residual block keeps its shortcut, y = relu(S(x)); removing a plain block
replaces it by the identity where its input and output shapes agree. Veit et al. find
that a ResNet's error changes little when one block is removed (downsampling blocks
aside) and grows smoothly with the number removed, while a plain net breaks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradflow.evidence import Lesions, lesion_study
from gradflow.evidence.figures import lesion_figure
from gradflow.report import Section

from .common import compare, shown, start

TEST_IMAGES = {"smoke": 64, "small": 1000}
KS = (2, 4, 6, 8)
DRAWS = 3
NEAR_CHANCE = 10.0  # points: an error within this of chance counts as a broken net
VEIT = (
    "Veit et al. 2016: removing single blocks from a trained ResNet barely changes its "
    "error, removing a layer of a plain (VGG) net drops it to chance"
)


def _summary(frame: pd.DataFrame, chance: float) -> pd.DataFrame:
    """Per model: intact error, single-lesion errors (mean, max, at downsampling blocks and
    elsewhere), how far one removal goes toward ``chance`` (the share of single lesions within
    NEAR_CHANCE points of it, and gap_closed = (mean single-lesion error - intact) / (chance -
    intact): 0 = no harm, 1 = chance on average) and the mean error with k blocks removed."""
    rows = []
    for model, part in frame.groupby("model", sort=False):
        intact = float(part[part.k == 0].error.iloc[0])
        single = part[part.k == 1]
        downsampling = single[(single.stage > 1) & (single.block == 1)]
        other = single.drop(downsampling.index)
        row = {
            "model": model,
            "intact_error": intact,
            "removable_blocks": len(single),
            "mean_single_lesion_error": single.error.mean(),
            "max_single_lesion_error": single.error.max(),
            "mean_increase": single.error.mean() - intact,
            "near_chance_share": 100 * float((single.error >= chance - NEAR_CHANCE).mean()),
            "gap_closed": (single.error.mean() - intact) / (chance - intact),
            "downsampling_mean_error": downsampling.error.mean() if len(downsampling) else np.nan,
            "other_blocks_mean_error": other.error.mean(),
        }
        for k, error in part[part.k > 1].groupby("k").error.mean().items():
            row[f"k{k}_mean_error"] = error
        rows.append(row)
    return pd.DataFrame(rows)


def _comparisons(table: pd.DataFrame) -> list[str]:
    """Per depth, ResNet against plain: how much one removal harms (mean increase, share of
    lesions near chance, share of the gap to chance closed), k removals, downsampling."""
    lines = []
    depths = sorted({int(m.removeprefix("plain").removeprefix("resnet")) for m in table.index})
    for depth in depths:
        plain, resnet = f"plain{depth}", f"resnet{depth}"
        lines.append(compare(
            resnet, table.at[resnet, "mean_increase"], plain, table.at[plain, "mean_increase"],
            quantity="mean error increase when one block is removed", expected="lower",
            verb="has", unit=" points", paper=VEIT,
        ))  # fmt: skip
        lines.append(compare(
            resnet, table.at[resnet, "near_chance_share"], plain,
            table.at[plain, "near_chance_share"], verb="has", unit="%",
            quantity=f"share of single-block removals within {NEAR_CHANCE:g} points of chance",
            expected="lower", paper=VEIT + " (a plain net breaks)",
        ))  # fmt: skip
        lines.append(compare(
            resnet, table.at[resnet, "gap_closed"], plain, table.at[plain, "gap_closed"],
            quantity="share of the gap from its intact error to chance closed by one removal "
            "on average", expected="lower", verb="has", unit="",
            paper=VEIT + " (residual nets degrade smoothly)",
        ))  # fmt: skip
        for k in (2, max(KS)):
            column = f"k{k}_mean_error"
            if column in table and table[column][[plain, resnet]].notna().all():
                lines.append(compare(
                    resnet, table.at[resnet, column], plain, table.at[plain, column],
                    quantity=f"mean error with {k} random blocks removed", expected="lower",
                    verb="has", paper=VEIT + "; their Fig. 5: the error grows smoothly with k",
                ))  # fmt: skip
        if not np.isnan(table.at[resnet, "downsampling_mean_error"]):
            lines.append(compare(
                f"{resnet}'s downsampling blocks", table.at[resnet, "downsampling_mean_error"],
                "its other blocks", table.at[resnet, "other_blocks_mean_error"],
                quantity="mean error when removed", expected="higher", verb="give",
                paper="Veit et al. 2016: removing a downsampling block hurts more",
            ))  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    experiment = start(__file__, __doc__, argv, "jacobian")
    if experiment is None:  # --plan printed the runs
        return
    test = experiment.dataset("test")
    images = min(len(test), TEST_IMAGES.get(experiment.scale.name, TEST_IMAGES["small"]))
    x, y = test.batch(images, seed=experiment.args.seed)
    frames = []
    for model, init in experiment.models():
        trained = experiment.run(model, init).model
        count = len(Lesions(trained, x[:64]).removable)
        ks = [k for k in KS if k <= count]
        frames.append(lesion_study(trained, x, y, ks=ks, draws=DRAWS, label=model,
                                   seed=experiment.args.seed, progress=experiment.log))  # fmt: skip
    frame = pd.concat(frames, ignore_index=True)
    chance = 100 * (1 - 1 / test.num_classes)
    table = _summary(frame, chance)
    sections = [
        Section(
            "Blocks removed at test time",
            paragraphs=[
                f"Trained nets from the run cache, in eval mode (BN running statistics), on "
                f"{images} class-balanced test images (seeded). k = 1: every removable block "
                f"removed alone; k = {', '.join(map(str, KS))}: {DRAWS} random sets of k "
                "removable blocks removed together (seeded). A residual block is removed by "
                "setting its branch to zero, y = relu(S(x)): its option-A shortcut, which "
                "subsamples and zero-pads at the stage transitions, stays. A plain block is "
                "replaced by the identity; the first block of stages 2 and 3 changes the "
                "shape and cannot be removed from a plain net. Errors in %; every "
                "evaluation on a private copy.",
                "Downsampling blocks: the first block of stages 2 and 3. near_chance_share: "
                f"% of single-block removals whose error is within {NEAR_CHANCE:g} points of "
                f"chance ({chance:.0f}%); gap_closed: (mean single-lesion error - intact) / "
                "(chance - intact), 0 when one removal does no harm, 1 when it gives chance on "
                "average.",
            ],
            table=shown(table),
            figures=[
                (
                    "lesion_errors",
                    lesion_figure(frame, chance=chance),
                    "Test error with blocks removed (dotted: chance).",
                )
            ],
        ),
    ]
    experiment.write_report(
        "Lesion study: trained nets with blocks removed",
        sections,
        {"lesions": frame, "summary": table},
        _comparisons(table.set_index("model")),
    )
