"""The click application (``mlconv``)."""

from .main import cli, main

__all__ = ["cli", "main"]
