"""Errors a user can cause (bad names, paths, options, data): the CLI exits 2 on these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class UserInputError(ValueError):
    """Something the user asked for is wrong; the message says what and what to do."""


class ParameterError(UserInputError):
    """A bad value of one named parameter; the command line shows it as its flag."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def check_choice(option: str, value: object, allowed: Sequence[object]) -> object:
    """``value`` if it is one of ``allowed``, else a ParameterError naming the choices."""
    if value not in allowed:
        raise ParameterError(
            option, f"unknown {option} {value!r}; allowed: {', '.join(map(str, allowed))}"
        )
    return value


def cli_message(err: UserInputError, flags: Mapping[str, str]) -> str:
    """The message of ``err`` with its parameter's name replaced by the flag that sets it."""
    message = str(err)
    parameter = getattr(err, "parameter", None)
    if parameter not in flags:
        return message
    if message.startswith(f"{parameter} "):
        return flags[parameter] + message[len(parameter) :]
    return f"{message} ({flags[parameter]})"
