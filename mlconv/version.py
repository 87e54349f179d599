"""The package version, at the bottom floor so every module may read it."""

__version__ = "0.1.0"
