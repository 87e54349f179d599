"""The exception hierarchy (SPEC §6). Every failure a user can cause is one of these.

Each error names the file and, where there is one, the entry; ``str(err)`` is the one line
the CLI prints: ``<what> (<file>[:<entry>])``.
"""

from __future__ import annotations

import os
import re

MAX_LINE = 1000  # characters of an error line; a file can put anything in a message
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Messages name their way out in CLI words (``use --force``); a library caller reads the
# same hint as keyword arguments (``use overwrite=True``).
_RENAMED = {"force": "overwrite", "from": "from_format", "to": "to_format"}
# keywords of convert()/plan()/validate() themselves; any other flag is one of a format's
# own write options, which the API takes as ``options={...}``
_KEYWORDS = {"cast", "select", "exclude", "from", "to", "compression", "max-memory", "pad",
             "schema", "force", "allow-lossy", "allow-external", "allow-expand", "dry-run",
             "deep", "quick", "trusted", "jobs"}
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?:[ =]([^\s;,()]+))?")


_SWITCHES = {"force", "allow-lossy", "allow-external", "allow-expand", "dry-run", "deep",
             "quick", "trusted"}
_WORDS = {"does", "must", "applies", "expects", "needs", "is", "takes", "only", "and", "or",
          "to", "with", "writes", "cannot", "has"}


def _api_name(name: str) -> str:
    key = _RENAMED.get(name, name.replace("-", "_"))
    return key if name in _KEYWORDS else f"options[{key!r}]"


def _api_words(text: str) -> str:
    def sub(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if m.start() == 0:  # "--template does not match": the flag is the subject
            return _api_name(name) + (f" {value}" if value else "")
        if value in _WORDS:  # "use --allow-lossy or ...": the word is not its value
            value = None
            tail = f" {m.group(2)}"
        else:
            tail = ""
        return _instruction(name, value) + tail

    def _instruction(name, value) -> str:
        if name in ("from", "to") and (value is None or value.isupper()):
            return f"the {'from_format/format' if name == 'from' else 'to_format/format'} " \
                "argument"
        key = _RENAMED.get(name, name.replace("-", "_"))
        if name not in _KEYWORDS:  # a format's own option
            shown = "True" if value is None else "..." if value.isupper() else repr(value)
            return f"options={{{key!r}: {shown}}}"
        if name in _SWITCHES:
            return f"{key}=True" + (f" {value}" if value else "")
        if value is None:
            return key + "=..."
        if name == "cast" and "=" in value:
            a, b = value.split("=", 1)
            return f"cast={{{a!r}: {b!r}}}"
        if name in ("select", "exclude"):
            return f"{key}=[{value!r}]"
        return f"{key}={value!r}" if not value.isupper() else f"{key}=..."
    return _FLAG.sub(sub, text)


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

    def render(self, cli: bool = False) -> str:
        """The one line: the CLI's words with ``cli``, keyword arguments without."""
        where = self.path or ""
        if self.entry is not None:
            where = f"{where}:{self.entry}" if where else self.entry
        # the message and the name each capped, so a long message keeps the file's name
        message = one_line(self.message if cli else _api_words(self.message))
        return f"{message} ({one_line(where, MAX_LINE // 2)})" if where else message

    def __str__(self) -> str:
        return self.render(cli=False)

    def __reduce__(self):  # keep path and entry across processes
        return (_rebuild, (type(self), self.message, self.path, self.entry))


def _rebuild(cls, message, path, entry):
    return cls(message, path, entry)


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


class Loss(str):
    """Something of the source the target will not hold, decided once by the planner.

    Reads as its warning line (``what (file:entry)``); ``what`` is the same for alike
    losses, so they can be counted together. ``kind`` ("dtype", "metadata", "attrs",
    "column", "entry", ...) and ``way_out`` (the options that avoid it) are data for
    callers; ``refusal`` is the error the run stops with unless losses are allowed
    (None: a note that never stops a run, such as a filled null or a graph left behind).
    """

    def __new__(cls, what: str, path: str | os.PathLike | None = None,
                entry: str | None = None, kind: str = "other", way_out: str | None = None,
                refusal: str | None = None):
        line = MlconvError(what, path, entry).render()
        self = super().__new__(cls, line)
        self.what, self.entry, self.kind, self.way_out = what, entry, kind, way_out
        self.refusal = refusal
        self.path = os.fspath(path) if path is not None else None
        return self

    def render(self, cli: bool = False) -> str:
        return MlconvError(self.what, self.path, self.entry).render(cli)

    def error(self) -> LossyConversionError:
        """The error a run that does not allow losses stops with."""
        return LossyConversionError(self.refusal or self.what, self.path, self.entry)

    def __reduce__(self):  # many-file reports cross processes
        return (Loss, (self.what, self.path, self.entry, self.kind, self.way_out,
                       self.refusal))


def as_loss(item) -> Loss:
    """A Loss from a Loss, an MlconvError or a plain warning line."""
    if isinstance(item, Loss):
        return item
    if isinstance(item, MlconvError):
        return Loss(item.message, item.path, item.entry)
    return Loss(str(item))
