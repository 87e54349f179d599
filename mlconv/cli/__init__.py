"""The click application (``mlconv``)."""

from .main import cli, main, program

__all__ = ["cli", "main", "program"]
