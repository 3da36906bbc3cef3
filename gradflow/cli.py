"""The ``gradflow`` command: ``models`` (and ``analyze``, ``train``, ``reproduce``).

Each sub-command is a thin layer over the Python API. User errors (bad names, paths,
options, data) print one paragraph on stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .configs import AnalysisConfig
from .errors import UserInputError, cli_message
from .options import add_command, from_args
from .train_cli import add_train_parser

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


def _default_out(models: Sequence[str]) -> Path:
    """A new folder under the current directory: gradflow-report-<models>[-N]."""
    stem = "gradflow-report-" + "-".join(m.replace(":", "_").replace("/", "_") for m in models)
    stem = stem[:80]
    candidate, n = Path(stem), 1
    while candidate.exists():
        n += 1
        candidate = Path(f"{stem}-{n}")
    return candidate


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run the analysis (training first for --steps), print the summary, write the report."""
    from .analyze import check_out
    from .budget import spectra_lines
    from .memory import record_lines
    from .model_inputs import input_lines
    from .outdir import output_lock
    from .pipeline import run_analysis

    config = from_args(AnalysisConfig, args)
    config.validate()  # before the work, as the output folder check
    out = Path(args.out) if args.out else _default_out(config.models)
    check_out(out, overwrite=args.force)  # before the work, not only when saving
    with output_lock(out):  # one run per folder: a second one stops here, not after its work
        result = run_analysis(config)
        result.save(out, overwrite=args.force)
    print(result.summary_text())
    lines = [*input_lines(result.meta), *record_lines(result.meta), *spectra_lines(result.meta)]
    print("\n" + "\n".join(lines))
    print(f"\nreport: {out / 'report.html'}   data: {out / 'data'}")
    return 0


def add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "analyze",
        AnalysisConfig,
        cmd_analyze,
        help="measure gradient flow through models; write a report",
        description=(
            "Measure, for each model at initialisation (and after --steps of training or "
            "from --checkpoint), the per-layer response std, the activation-gradient norm "
            "at every block boundary and the Jacobian spectra of each block and of the "
            "cumulative map from the input; print a summary and write a self-contained "
            "report (report.html, figures/, data/*.parquet|csv, meta.json)."
        ),
        epilog=(
            "examples:\n"
            "  gradflow analyze --model plain56 --model resnet56\n"
            "  gradflow analyze --model resnet110 --init zero_gamma --out zg110\n"
            "  gradflow analyze --model resnet20 --data fashion-mnist --steps 200\n"
            "  gradflow analyze --model my_net.py:build --model torchvision:resnet18\n"
            "  gradflow analyze --model mlp.py:build --input-shape 32 --loss mse\n"
            "  gradflow analyze --model hf:gpt2 --model-options n_layer=2,n_embd=32 --seq-len 16"
        ),
    )
    parser.add_argument(
        "--out", help="report folder (default: a new gradflow-report-<models> folder here)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace --out if it is an earlier gradflow report "
        "(a folder holding other files is never replaced)",
    )


def cmd_reproduce(args: argparse.Namespace) -> int:
    from . import experiments

    if args.list or not args.name:
        for name in experiments.EXPERIMENTS:
            print(f"{name:22} {experiments.describe(name)}")
        if not args.list:
            print("\nusage: gradflow reproduce NAME [--scale smoke|small|full] [--plan] ...")
        return 0
    experiments.run(args.name, args.options)
    return 0


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reproduce",
        help="run one of the paper's experiments and write its report",
        description="Run a paper experiment (Figure 1/4/6/7, zero-gamma ablation, cumulative "
        "spectra) and write its report: README.md with figures, CSVs, meta.json. Options "
        "after NAME go to the experiment: see gradflow reproduce NAME --help.",
        epilog="example: gradflow reproduce fig1 --scale smoke",
    )
    parser.add_argument("name", nargs="?", help="experiment (a unique prefix is enough)")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the experiment's options")
    parser.add_argument("--list", action="store_true", help="list the experiments")
    parser.set_defaults(run=cmd_reproduce)


PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_models_parser,
    add_analyze_parser,
    add_train_parser,
    add_reproduce_parser,
]


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
        message = cli_message(err, getattr(args, "flags", {}))
        print(f"gradflow {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"gradflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
