"""The version of gradflow (its own module: everything below the package can read it)."""

__version__ = "0.1.0"
