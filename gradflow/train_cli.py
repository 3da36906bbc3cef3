"""``gradflow train``: the command-line face of ``gradflow.train`` (also under torchrun)."""

from __future__ import annotations

import argparse
import os

from .configs import TrainConfig
from .errors import UserInputError
from .options import add_command, from_args

EXAMPLES = """examples:
  gradflow train --model resnet20 --iterations 2000 --out runs/resnet20
  gradflow train --model plain56 --data fashion-mnist --pad-to 32 --out runs/plain56-fm
  gradflow train --model resnet110 --data cifar10 --data-dir ~/data --val-size 5000 \\
      --warmup-iterations 400 --out runs/resnet110            # the paper's full recipe
  gradflow train --out runs/resnet110 --resume ...           # continue a killed run
  torchrun --nproc-per-node 2 -m gradflow train --model resnet56 --out runs/ddp

Writes into --out: checkpoint.pt (latest), history.csv/.parquet (error %, loss, lr by step),
records.csv/.parquet (Recorder frames every --record-every iterations), final.pt, meta.json."""


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``gradflow train`` with every knob of ``TrainConfig`` (its fields' options)."""
    add_command(
        sub,
        "train",
        TrainConfig,
        cmd_train,
        help="train a model with the paper's recipe (resumable, DDP under torchrun)",
        description=(
            "Train a zoo model with He et al.'s CIFAR recipe: SGD lr 0.1, momentum 0.9,\n"
            "weight decay 1e-4, batch 128, lr / 10 at 50% and 75% of the iterations,\n"
            "4-pixel pad + random crop + flip. Logs train/test error (%) and Recorder\n"
            "statistics as tidy frames; resumable; DDP under torchrun."
        ),
        epilog=EXAMPLES,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``gradflow train``: build a TrainConfig from the options, train, print a summary."""
    from .train import train

    config = from_args(TrainConfig, args)
    result = train(config)
    if config.progress and int(os.environ.get("RANK", "0")) == 0:
        data = result.meta["data"]
        errors = ", ".join(f"{s} {v:.2f}%" for s, v in result.meta["final_error_percent"].items())
        print(
            f"{config.label or config.model} after {config.iterations} iterations: error {errors}"
        )
        print(f"data: {data['description']}")
        if config.out_dir:
            print(f"wrote {config.out_dir}/ (history, records, checkpoint.pt, final.pt, meta.json)")
    return 0


__all__ = ["UserInputError", "add_train_parser", "cmd_train"]
