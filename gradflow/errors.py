"""Errors a user can cause (bad names, paths, options, data): the CLI exits 2 on these."""


class UserInputError(ValueError):
    """Something the user asked for is wrong; the message says what and what to do."""
