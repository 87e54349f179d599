"""``-`` as SRC or DST: stdin is spooled to a temp file (readers need to seek), the output
is written to a temp file and copied to stdout only once it is whole."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from ..errors import MlconvError, OptionError
from ..formats import get


def convert_stdio(src: str, dst: str, to_format, options: dict, on_report) -> None:
    from ..convert import convert

    if src == "-" and not options.get("from_format"):
        raise OptionError("reading stdin needs --from FORMAT")
    if dst == "-" and not to_format:
        raise OptionError("writing to stdout needs --to FORMAT")
    with tempfile.TemporaryDirectory(prefix="mlconv-") as tmp:
        if src == "-":
            src = os.path.join(tmp, "stdin" + get(options["from_format"]).extensions[0])
            with open(src, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        out = os.path.join(tmp, "stdout" + get(to_format).extensions[0]) if dst == "-" \
            else dst
        report = convert(src, out, to_format=to_format, **options)
        if dst == "-":
            ours = {os.path.basename(out), os.path.basename(src)}
            if set(os.listdir(tmp)) - ours:
                raise MlconvError("the output needs a second file (external data); it "
                                  "cannot go to stdout", "-")
            with open(out, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
            sys.stdout.buffer.flush()
            report.dst = "-"
        if report.src and report.src.startswith(tmp):
            report.src = "-"
        on_report(report)
