"""The settings of ``gradflow analyze`` and ``gradflow train``, each option written once.

Every field is an ``options.option``: its help text, flag, limits and choices serve the
library's checks and the command line's flags alike (``gradflow.options``). Light on
purpose (no torch): the command line builds its ``--help`` from these classes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .errors import ParameterError, UserInputError, check_choice
from .options import check_options, option


def dataset_names() -> tuple[str, ...]:
    """The data sets ``gradflow.data`` defines (the choices of every --data)."""
    from .data import DATASETS

    return DATASETS


def loss_names() -> tuple[str, ...]:
    """The losses ``gradflow.losses`` defines by name (the choices of --loss)."""
    from .losses import LOSSES

    return tuple(LOSSES)


def milestones(text: str) -> tuple[float, ...]:
    """--milestones: positive numbers separated by commas (fractions, or iterations if > 1)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


# The ends of each spectrum --which measures (gradflow.budget), here so --help needs no torch.
SPECTRA_WHICH = ("auto", "both", "largest")

# The BN modes gf.hessian_spectra measures in (--hessian-bn), here so --help needs no torch.
HESSIAN_BN_MODES = ("train", "eval")


MODEL_HELP = (
    "a registry name (gradflow models), hf:MODEL_TYPE (from a config, no download), "
    "torchvision:NAME or path/to/file.py:factory"
)
DATA_DIR_HELP = (
    "folder of the data set files (default for fashion-mnist: /usr/share/datasets/"
    "fashion-mnist, from the Debian package dataset-fashion-mnist; cifar10: $GRADFLOW_CIFAR10 "
    "or ~/.cache/gradflow/cifar10)"
)


@dataclass
class AnalysisConfig:
    """Everything that determines an analysis run (also written to meta.json)."""

    models: list[str] = option(  # noqa: RUF009 (option is a dataclasses.field)
        help=MODEL_HELP + "; repeat to compare models", flag="--model", metavar="NAME", repeat=True
    )
    data: str = option(
        "synthetic",
        choices=dataset_names,
        help="data of the measurement batch (synthetic: generated in code; 1-channel data "
        "sets build models with in_channels=1)",
    )
    data_dir: str | None = option(None, help=DATA_DIR_HELP)
    batch_size: int | None = option(
        None,
        minimum=2,
        help="measurement batch size (default: 128; fewer for inputs larger than 3x32x32, "
        "8 at 3x224x224; written to meta.json)",
    )
    record_memory: int = option(
        1024,
        minimum=16,
        metavar="MIB",
        help="MiB of activations the record phase may keep for its backward: a batch that "
        "needs more is fed in equal micro-batches (written to meta.json)",
    )
    samples: int | None = option(
        None,
        minimum=1,
        help="samples of the measurement batch for the Jacobian spectra (default 2; 1 for a "
        "model whose spectra would exceed the work budget: gradflow.budget, written to "
        "meta.json and the report)",
    )
    which: str = option(
        "auto",
        choices=SPECTRA_WHICH,
        help="ends of each spectrum: both (k largest and k smallest), largest; auto: both, "
        "or largest for a model over the work budget (the smallest are then not measured; "
        "written to meta.json and the report)",
    )
    k: int = option(8, minimum=1, help="largest and smallest singular values per operator")
    depths: str = option(
        "auto", help="depths of the cumulative spectra: auto, all, or a comma list like 1,9,18,27"
    )
    seed: int = option(0, help="seed of the measurement batch and of the models' initial weights")
    device: str = option("cpu", help="cpu, cuda or cuda:N")
    init: str | None = option(
        None, help="initialisation for registry models: he, zero_gamma, skipinit, fixup"
    )
    steps: int = option(
        0,
        minimum=0,
        help="train this many iterations with the paper's SGD recipe first; analyse at init "
        "and after (0: init only)",
    )
    checkpoint: str | None = option(None, help="analyse a trained model from this checkpoint")
    progress: bool = option(True, flag="--quiet", help="no progress bars")
    threads: int = option(
        1,
        minimum=0,
        help="torch CPU threads (1: robust on a busy machine and the same bits on any core "
        "count; 0 keeps torch's default)",
    )
    # What models outside the zoo are fed (gradflow.model_inputs): flags for the common cases.
    input_shape: str | None = option(
        None,
        metavar="SHAPE",
        help="per-sample input shape of the probe batch: C,H,W images (e.g. 3,224,224) or D "
        "vectors (e.g. 32); default: the model's own inputs or size",
    )
    vocab_size: int | None = option(
        None, minimum=2, metavar="V", help="feed token ids in [0, V) of length --seq-len"
    )
    seq_len: int | None = option(
        None, minimum=1, metavar="T", help="length of token inputs (default 32)"
    )
    loss: str = option(
        "auto",
        help="loss of the backward pass: auto (the model file's loss, else by output and "
        "targets), cross_entropy, mse, lm (next-token), sum_output",
    )
    model_options: str | None = option(
        None,
        metavar="K=V,...",
        help="keyword options of the model's constructor, e.g. n_layer=12,n_embd=256 for hf:gpt2",
    )
    whatif: bool = option(
        False,
        help="also analyse the counterfactual nets gradflow can build at init (zoo nets: with "
        "identity shortcuts, zero-gamma, pre-activation; models with residual blocks: "
        "zero-gamma on each branch's last norm) and tabulate them side by side",
    )
    # The loss Hessian (gradflow.analyze_hessian): per block and for the whole net.
    hessian: bool = option(
        False,
        help="also measure the loss Hessian: top eigenvalue and trace of every block's "
        "diagonal Hessian block, the whole net's spectral density (a fixed product budget on "
        "a sub-batch: bounded time)",
    )
    hessian_batch: int = option(
        16,
        minimum=2,
        metavar="N",
        help="samples of the measurement batch the Hessian is measured on (its cost grows "
        "linearly with N)",
    )
    hessian_bn: str = option(
        "train",
        choices=HESSIAN_BN_MODES,
        help="BN in the measured Hessian: train (batch statistics, the training objective) "
        "or eval (running statistics)",
    )

    def validate(self) -> None:
        """Raise UserInputError (naming the parameter) for settings that cannot work."""
        check_choice("loss", self.loss, loss_names())
        if self.steps and any(":" in m or m.endswith(".py") for m in self.models):
            raise ParameterError(
                "steps",
                "steps trains zoo models only: drop it for file, hf: or torchvision: models",
            )
        if not self.models:
            raise ParameterError("models", "no model given: name at least one, e.g. resnet56")
        if self.checkpoint and len(self.models) != 1:
            raise ParameterError("checkpoint", "checkpoint applies to one model: pass exactly one")
        if self.whatif and self.checkpoint:
            raise ParameterError(
                "whatif", "whatif compares nets at init: drop checkpoint, or whatif"
            )
        check_options(self)


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the paper's CIFAR-10 recipe."""

    model: str = option("resnet20", group="model", help="zoo name (e.g. plain56)")
    init: str | None = option(
        None, group="model", help="he | zero_gamma | skipinit | fixup (default: he)"
    )
    shortcut: str | None = option(
        None, group="model", help="A | B | C for residual nets (default: A, the paper's)"
    )
    data: str = option(
        "synthetic",
        group="data",
        choices=dataset_names,
        help="dataset (synthetic: generated in code; e.g. --data fashion-mnist)",
    )
    data_dir: str | None = option(None, group="data", help=DATA_DIR_HELP)
    pad_to: int | None = option(
        None,
        group="data",
        help="zero-pad images to this size, e.g. --pad-to 32 for Fashion-MNIST (28x28)",
    )
    synthetic_size: int | None = option(
        None, group="data", help="training images of the synthetic set (default 10000)"
    )
    synthetic_image_size: int = option(
        32, group="data", minimum=1, help="side of the synthetic images (e.g. 8 for a smoke test)"
    )
    val_size: int = option(
        0,
        group="data",
        minimum=0,
        help="hold out this many training images for validation (the paper: --val-size 5000)",
    )
    augment: bool = option(True, group="data", flag="--no-augment", help="no padding/crop/flip")
    iterations: int = option(
        64_000, group="recipe", minimum=1, help="iteration budget (the paper's; e.g. 2000)"
    )
    batch_size: int = option(
        128, group="recipe", minimum=1, help="global batch size, split across torchrun processes"
    )
    lr: float = option(0.1, group="recipe", help="initial learning rate")
    momentum: float = option(0.9, group="recipe", help="SGD momentum")
    weight_decay: float = option(1e-4, group="recipe", help="L2 weight decay")
    milestones: tuple[float, ...] = option(
        (0.5, 0.75),
        group="recipe",
        type=milestones,
        help="lr / 10 at these fractions of the budget, or iterations if > 1 "
        "(e.g. --milestones 32000,48000)",
    )
    lr_decay: float = option(0.1, group="recipe", help="lr factor at each milestone")
    warmup_iterations: int = option(
        0,
        group="recipe",
        minimum=0,
        help="warm up at --warmup-lr until train error < 80% or this many iterations "
        "(0 = off; ResNet-110: --warmup-iterations 400)",
    )
    warmup_lr: float = option(0.01, group="recipe", help="warm-up learning rate")
    warmup_error: float = option(80.0, cli=False, help="warm-up ends below this batch error %")
    eval_every: int = option(
        1000,
        group="logging and output",
        minimum=1,
        help="log train/test error every N iterations (e.g. --eval-every 100)",
    )
    eval_batch_size: int = option(500, cli=False, minimum=1, help="images per evaluation batch")
    record_every: int = option(
        1000,
        group="logging and output",
        minimum=0,
        help="run the Recorder every N iterations (0 = never)",
    )
    checkpoint_every: int = option(
        1000,
        group="logging and output",
        minimum=0,
        help="write checkpoint.pt every N iterations (0 = only at the end)",
    )
    out_dir: str | None = option(
        None,
        group="logging and output",
        flag="--out",
        help="output directory (e.g. --out runs/resnet20); nothing is written without it",
    )
    resume: bool = option(
        False,
        group="logging and output",
        help="continue from --out/checkpoint.pt (same settings); starts fresh if there is none",
    )
    seed: int = option(0, group="recipe", help="seed of init, data order and augmentation")
    device: str = option(
        "auto", group="logging and output", help="cpu, cuda, cuda:1 (auto: the local GPU if any)"
    )
    label: str | None = option(
        None, group="model", help="name in the frames' model column (default: --model)"
    )
    progress: bool = option(
        True, group="logging and output", flag="--quiet", help="no progress bar or summary"
    )
    download: bool = option(
        False, group="data", help="fetch CIFAR-10 with torchvision if missing (needs network)"
    )

    def milestone_iterations(self) -> list[int]:
        """Iterations at which the lr is divided: floor(fraction * iterations), or m if m > 1."""
        return sorted(int(m * self.iterations) if m <= 1 else int(m) for m in self.milestones)

    def validate(self) -> None:
        """Raise UserInputError (naming the parameter) for settings that cannot work."""
        check_options(self)
        for name in ("lr", "warmup_lr", "lr_decay"):
            if not getattr(self, name) > 0:
                raise ParameterError(name, f"{name} must be positive, got {getattr(self, name)}")
        if any(m <= 0 for m in self.milestones):
            raise ParameterError(
                "milestones", f"milestones must be positive, got {list(self.milestones)}"
            )
        if self.resume and not self.out_dir:
            raise UserInputError("--resume needs --out (the directory holding checkpoint.pt)")
