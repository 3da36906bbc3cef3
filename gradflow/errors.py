"""Errors a user can cause (bad names, paths, options, data): the CLI exits 2 on these."""

from __future__ import annotations

from collections.abc import Sequence


class UserInputError(ValueError):
    """Something the user asked for is wrong; the message says what and what to do."""


def check_choice(option: str, value: object, allowed: Sequence[object]) -> object:
    """``value`` if it is one of ``allowed``, else a UserInputError naming the choices."""
    if value not in allowed:
        raise UserInputError(f"unknown {option} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value
