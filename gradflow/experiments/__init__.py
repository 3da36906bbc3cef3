"""The paper's experiments, one module each: ``gradflow reproduce NAME [--scale ...]``.

Each module has ``main(argv)`` with the shared command line of ``common.parse_args``
(``--scale smoke|small|full``, ``--out``, ``--data``, ``--cache``, ``--plan``, ...); the
scripts in the repository's ``experiments/`` folder are thin wrappers around them, so
``python experiments/fig1_degradation.py`` and ``gradflow reproduce fig1`` run the same code.
Outputs go to the working directory: reports/<name> at small scale, the run cache in runs/.
"""

from __future__ import annotations

import importlib

from ..errors import UserInputError

EXPERIMENTS = (
    "fig1_degradation",
    "fig4_imagenet_style",
    "fig6_cifar_depth",
    "fig7_response_std",
    "hessian_spectra",
    "jacobian_spectra",
    "lesion_study",
    "seed_spread",
    "shattered_gradients",
    "transformer_ln",
    "zero_gamma_ablation",
)


def resolve(name: str) -> str:
    """The experiment called ``name``, or the only one it is a prefix of (``fig1``)."""
    if name in EXPERIMENTS:
        return name
    matches = [experiment for experiment in EXPERIMENTS if experiment.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    hint = f"it could be {' or '.join(matches)}" if matches else "see gradflow reproduce --list"
    raise UserInputError(
        f"unknown experiment {name!r} ({hint}); experiments: {', '.join(EXPERIMENTS)}"
    )


def describe(name: str) -> str:
    """The first line of the experiment's docstring."""
    module = importlib.import_module(f"{__name__}.{name}")
    return (module.__doc__ or "").strip().splitlines()[0]


def run(name: str, argv: list[str]) -> None:
    """Run experiment ``name`` (a full name or a unique prefix) with command line ``argv``."""
    module = importlib.import_module(f"{__name__}.{resolve(name)}")
    module.main(argv)
