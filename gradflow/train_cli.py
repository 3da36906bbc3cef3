"""``gradflow train``: the command-line face of ``gradflow.train`` (also under torchrun)."""

from __future__ import annotations

import argparse
import os
import sys

from .data import DATASETS
from .errors import UserInputError

EXAMPLES = """examples:
  gradflow train --model resnet20 --iterations 2000 --out runs/resnet20
  gradflow train --model plain56 --data fashion-mnist --pad-to 32 --out runs/plain56-fm
  gradflow train --model resnet110 --data cifar10 --data-dir ~/data --val-size 5000 \\
      --warmup-iterations 400 --out runs/resnet110            # the paper's full recipe
  gradflow train --out runs/resnet110 --resume ...           # continue a killed run
  torchrun --nproc-per-node 2 -m gradflow train --model resnet56 --out runs/ddp

Writes into --out: checkpoint.pt (latest), history.csv/.parquet (error %, loss, lr by step),
records.csv/.parquet (Recorder frames every --record-every iterations), final.pt, meta.json."""


def _milestones(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``gradflow train`` with every knob of ``TrainConfig``."""
    parser = sub.add_parser(
        "train",
        help="train a model with the paper's recipe (resumable, DDP under torchrun)",
        description=(
            "Train a zoo model with He et al.'s CIFAR recipe: SGD lr 0.1, momentum 0.9,\n"
            "weight decay 1e-4, batch 128, lr / 10 at 50% and 75% of the iterations,\n"
            "4-pixel pad + random crop + flip. Logs train/test error (%) and Recorder\n"
            "statistics as tidy frames; resumable; DDP under torchrun."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default="resnet20", help="zoo name (default resnet20; e.g. plain56)"
    )
    model.add_argument("--init", help="he | zero_gamma | skipinit | fixup (default: he)")
    model.add_argument("--shortcut", help="A | B | C for residual nets (default: A, the paper's)")
    model.add_argument("--label", help="name in the frames' model column (default: --model)")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="synthetic",
        choices=DATASETS,
        help="dataset (default synthetic, generated in code; e.g. --data fashion-mnist)",
    )
    data.add_argument(
        "--data-dir",
        help="where the files are (fashion-mnist default: /usr/share/datasets/fashion-mnist, "
        "cifar10: $GRADFLOW_CIFAR10 or ~/.cache/gradflow/cifar10); "
        "e.g. --data-dir ~/data/cifar-10-batches-py",
    )
    data.add_argument(
        "--pad-to",
        type=int,
        help="zero-pad images to this size, e.g. --pad-to 32 for Fashion-MNIST (28x28)",
    )
    data.add_argument(
        "--synthetic-size", type=int, help="training images of the synthetic set (default 10000)"
    )
    data.add_argument(
        "--synthetic-image-size",
        type=int,
        default=32,
        help="side of the synthetic images (default 32; e.g. 8 for a smoke test)",
    )
    data.add_argument(
        "--val-size",
        type=int,
        default=0,
        help="hold out this many training images for validation (the paper: --val-size 5000)",
    )
    data.add_argument(
        "--no-augment", dest="augment", action="store_false", help="no padding/crop/flip"
    )
    data.add_argument(
        "--download",
        action="store_true",
        help="fetch CIFAR-10 with torchvision if missing (needs network)",
    )
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--iterations",
        type=int,
        default=64000,
        help="iteration budget (default 64000, the paper's; e.g. --iterations 2000)",
    )
    recipe.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="global batch size (default 128), split across torchrun processes",
    )
    recipe.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default 0.1)")
    recipe.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    recipe.add_argument(
        "--weight-decay", type=float, default=1e-4, help="L2 weight decay (default 1e-4)"
    )
    recipe.add_argument(
        "--milestones",
        type=_milestones,
        default=(0.5, 0.75),
        help="lr / 10 at these fractions of the budget, or iterations if > 1 "
        "(default 0.5,0.75; e.g. --milestones 32000,48000)",
    )
    recipe.add_argument(
        "--lr-decay", type=float, default=0.1, help="lr factor at each milestone (default 0.1)"
    )
    recipe.add_argument(
        "--warmup-iterations",
        type=int,
        default=0,
        help="warm up at --warmup-lr until train error < 80%% or this many iterations "
        "(default 0 = off; ResNet-110: --warmup-iterations 400)",
    )
    recipe.add_argument(
        "--warmup-lr", type=float, default=0.01, help="warm-up learning rate (default 0.01)"
    )
    recipe.add_argument(
        "--seed", type=int, default=0, help="seed of init, data order and augmentation (default 0)"
    )
    output = parser.add_argument_group("logging and output")
    output.add_argument(
        "--eval-every",
        type=int,
        default=1000,
        help="log train/test error every N iterations (default 1000; e.g. --eval-every 100)",
    )
    output.add_argument(
        "--record-every",
        type=int,
        default=1000,
        help="run the Recorder every N iterations (default 1000; 0 = never)",
    )
    output.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="write checkpoint.pt every N iterations (default 1000; 0 = only at the end)",
    )
    output.add_argument(
        "--out", help="output directory (e.g. --out runs/resnet20); nothing is written without it"
    )
    output.add_argument(
        "--resume",
        action="store_true",
        help="continue from --out/checkpoint.pt (same settings); starts fresh if there is none",
    )
    output.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1 (default auto: the local GPU if any)"
    )
    output.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(run=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``gradflow train``: build a TrainConfig from the options, train, print a summary."""
    from .train import TrainConfig, train

    config = TrainConfig(
        model=args.model,
        init=args.init,
        shortcut=args.shortcut,
        label=args.label,
        data=args.data,
        data_dir=args.data_dir,
        pad_to=args.pad_to,
        synthetic_size=args.synthetic_size,
        synthetic_image_size=args.synthetic_image_size,
        val_size=args.val_size,
        augment=args.augment,
        download=args.download,
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        milestones=args.milestones,
        lr_decay=args.lr_decay,
        warmup_iterations=args.warmup_iterations,
        warmup_lr=args.warmup_lr,
        seed=args.seed,
        eval_every=args.eval_every,
        record_every=args.record_every,
        checkpoint_every=args.checkpoint_every,
        out_dir=args.out,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
    )
    result = train(config)
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        dataset = result.meta["dataset"]
        errors = ", ".join(f"{s} {v:.2f}%" for s, v in result.meta["final_error_percent"].items())
        print(
            f"{config.label or config.model} after {config.iterations} iterations: error {errors}"
        )
        print(f"data: {dataset['description']}", file=sys.stdout)
        if config.out_dir:
            print(f"wrote {config.out_dir}/ (history, records, checkpoint.pt, final.pt, meta.json)")
    return 0


__all__ = ["UserInputError", "add_train_parser", "cmd_train"]
