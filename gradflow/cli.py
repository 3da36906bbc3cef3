"""The ``gradflow`` command: ``models`` (and ``analyze``, ``train``, ``reproduce``).

Each sub-command is a thin layer over the Python API. User errors (bad names, paths,
options, data) print one paragraph on stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import UserInputError

EXIT_USER_ERROR = 2


def _models_table(family: str | None):
    import pandas as pd
    import torch

    from .models import count_macs, count_parameters, create_model, get_model_info, list_models

    rows = []
    for name in list_models(family):
        info = get_model_info(name)
        with torch.device("meta"):  # shapes only: instant, even for resnet1202
            model = create_model(name)
        rows.append(
            {
                "name": name,
                "family": info.family,
                "depth": info.depth,
                "blocks": info.blocks,
                "params": count_parameters(model),
                "GMACs": count_macs(model, info.input_size) / 1e9,
                "input": "x".join(map(str, info.input_size)),
            }
        )
    return pd.DataFrame(rows)


def cmd_models(args: argparse.Namespace) -> int:
    """Print the registry: name, family, depth, blocks, parameters, multiply-adds."""
    table = _models_table(args.family)
    if table.empty:
        raise UserInputError(f"no models in family {args.family!r}")
    if args.csv:
        table.to_csv(sys.stdout, index=False)
    else:
        print(
            table.to_string(
                index=False,
                formatters={"params": "{:,}".format, "GMACs": "{:.3f}".format},
            )
        )
        print(
            "\nGMACs: multiply-adds of conv/linear layers for one input of the given size "
            "(He et al. 2016, Table 1 'FLOPs').\nAny CIFAR depth 6n+2 also works by name, "
            "e.g. resnet74; see `gradflow analyze --help` for external models."
        )
    return 0


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "models",
        help="list the model zoo",
        description="List the registered models with depth, blocks, parameters and FLOPs.",
        epilog="example: gradflow models --family cifar",
    )
    parser.add_argument("--family", help="only this family (cifar, cifar-preact, imagenet)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    parser.set_defaults(run=cmd_models)


PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [add_models_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradflow",
        description="How gradients flow through deep networks (plain vs residual).",
        epilog="example: gradflow analyze --model plain56 --model resnet56",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserInputError as err:
        print(f"gradflow {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"gradflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
