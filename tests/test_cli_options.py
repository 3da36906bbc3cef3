"""The options mechanism: flags, defaults, help, choices and checks from dataclass fields."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, fields

import pytest

from gradflow.configs import AnalysisConfig, TrainConfig
from gradflow.errors import ParameterError, UserInputError, cli_message
from gradflow.options import add_options, check_options, cli_fields, flags, from_args, option


@dataclass
class Toy:
    names: list[str] = option(help="names; repeat", flag="--name", repeat=True)  # noqa: RUF009
    size: int = option(4, minimum=1, help="how many")
    ratio: float = option(0.5, help="a fraction")
    colour: str = option("red", choices=lambda: ("red", "blue"), help="a colour")
    shiny: bool = option(True, flag="--dull", help="not shiny")
    loud: bool = option(False, help="louder")
    hidden: int = option(7, cli=False, help="set by the program")


def _parse(argv: list[str]) -> Toy:
    parser = argparse.ArgumentParser()
    add_options(parser, Toy)
    return from_args(Toy, parser.parse_args(argv))


def test_flags_defaults_and_types_come_from_the_fields():
    toy = _parse(["--name", "a", "--name", "b", "--size", "9", "--dull", "--ratio", "0.25"])
    assert toy == Toy(["a", "b"], size=9, ratio=0.25, shiny=False)
    defaults = _parse(["--name", "a"])
    assert (defaults.size, defaults.colour, defaults.shiny, defaults.loud) == (
        4,
        "red",
        True,
        False,
    )
    assert defaults.hidden == 7 and "hidden" not in flags(Toy)
    assert flags(Toy)["names"] == "--name" and flags(Toy)["shiny"] == "--dull"


def test_help_shows_the_default_once_and_required_and_choices_are_enforced(capsys):
    parser = argparse.ArgumentParser()
    add_options(parser, Toy)
    text = parser.format_help()
    assert "how many (default 4)" in text and "{red,blue}" in text and "--hidden" not in text
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --name is required: the field has no default
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "a", "--colour", "green"])
    assert "invalid choice" in capsys.readouterr().err


def test_checks_name_the_parameter_and_the_cli_shows_the_flag():
    with pytest.raises(ParameterError, match="size must be at least 1, got 0") as info:
        check_options(Toy(["a"], size=0))
    assert info.value.parameter == "size" and isinstance(info.value, UserInputError)
    assert cli_message(info.value, flags(Toy)) == "--size must be at least 1, got 0"
    with pytest.raises(ParameterError) as info:
        check_options(Toy(["a"], colour="green"))
    assert cli_message(info.value, flags(Toy)).endswith("(--colour)")
    assert cli_message(UserInputError("plain"), flags(Toy)) == "plain"


def test_every_config_field_with_a_flag_is_on_its_command_line():
    from gradflow.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    for command, config in (("analyze", AnalysisConfig), ("train", TrainConfig)):
        text = sub[command].format_help()
        for flag in flags(config).values():
            assert flag in text, (command, flag)
        assert {f.name for f in cli_fields(config)} <= {f.name for f in fields(config)}
    assert "{synthetic,fashion-mnist,cifar10}" in sub["train"].format_help()


def test_library_and_cli_give_the_same_check():
    with pytest.raises(ParameterError, match="samples must be at least 1"):
        AnalysisConfig(["resnet8"], samples=0).validate()
    with pytest.raises(ParameterError, match="checkpoint applies to one model"):
        AnalysisConfig(["a", "b"], checkpoint="x.pt").validate()
    with pytest.raises(ParameterError, match="lr must be positive"):
        TrainConfig(lr=0).validate()


def test_help_imports_no_torch():
    code = (
        "import sys; from gradflow.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'pytest') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
    code = "import sys, gradflow; print('torch' in sys.modules, 'gradflow.testing' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False False", result.stderr
