"""The exception hierarchy (SPEC §6). Every failure a user can cause is one of these.

Each error names the file and, where there is one, the entry; ``str(err)`` is the one line
the CLI prints: ``<what> (<file>[:<entry>])``.
"""

from __future__ import annotations

import os
import re

MAX_LINE = 1000  # characters of an error line; a file can put anything in a message
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` as one printable line of at most ``limit`` characters: control characters
    (newlines in file or entry names) and lone surrogates escaped, the middle of an
    overlong line cut out."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    if len(text) > limit:
        cut = len(text) - limit
        text = f"{text[:limit // 2]}...[{cut} characters cut]...{text[-(limit // 2):]}"
    return text


class MlconvError(Exception):
    """Base class of every error mlconv raises on purpose."""

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 entry: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.entry = entry

    def __str__(self) -> str:
        where = self.path or ""
        if self.entry is not None:
            where = f"{where}:{self.entry}" if where else self.entry
        # the message and the name each capped, so a long message keeps the file's name
        message = one_line(self.message)
        return f"{message} ({one_line(where, MAX_LINE // 2)})" if where else message


class FormatError(MlconvError, ValueError):
    """The file is not a valid file of its format (corrupt, truncated, inconsistent)."""


class UnsupportedError(MlconvError):
    """The file is valid but uses something mlconv does not handle (yet)."""


class MissingDependencyError(UnsupportedError, ImportError):
    """An optional extra is needed: the message says which ``pip install mlconv[x]``."""


class LossyConversionError(MlconvError):
    """The target cannot hold something of the source (``--cast``/``--allow-lossy`` help)."""


class ValidationError(MlconvError):
    """A file failed validation against its format or an expectation file."""


class UnsafeInputError(MlconvError):
    """The file asks for something unsafe (pickles, paths outside its folder, ...)."""


class OutputExistsError(MlconvError, FileExistsError):
    """The destination exists and overwriting was not asked for."""


class OptionError(MlconvError, ValueError):
    """An option or argument is wrong (the CLI exits 2, as for usage errors)."""


class SourceNotFoundError(MlconvError, FileNotFoundError):
    """The input file does not exist or cannot be read."""
