"""The ``mlconv`` command: words in, exit codes out. The only place that prints or exits.

Exit codes: 0 success, 1 the data is at fault (one line ``mlconv: error: ...``), 2 usage
(one line too). Shell completion: ``eval "$(_MLCONV_COMPLETE=bash_source mlconv)"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from ..errors import MlconvError, OptionError, as_loss, one_line
from . import show


class _FormatIds(click.Choice):
    """The registered format ids, plugins included, looked up when used."""

    def __init__(self):
        super().__init__([], case_sensitive=False)

    @property
    def choices(self):
        from ..formats import ids

        return list(ids())

    @choices.setter
    def choices(self, value) -> None:
        pass  # the registry is the one list


FORMAT_IDS = _FormatIds()


def _print_traceback() -> None:
    import traceback  # only for --debug: every start would pay for it

    traceback.print_exc()


class _OutputFailed(Exception):
    """Our own output could not be written (stdout on a full disk): the user's to fix."""


def say(text: str, err: bool = False, nl: bool = True) -> None:
    stream = sys.stderr if err else sys.stdout
    try:
        click.echo(text, err=err, nl=nl)
    except BrokenPipeError:
        # the reader left (`mlconv inspect x | head`): what nobody reads is dropped, and
        # the command goes on to its own end and exit code (files still to convert, a
        # validation that failed); click would make it exit 1 here
        _discard(stream)
    except OSError as e:  # raised past _run, which takes OSError for the data's
        raise _OutputFailed(f"cannot write to {'stderr' if err else 'stdout'}: "
                            f"{e.strerror or e}") from None


def _discard(*streams) -> None:
    """What is still buffered for these streams goes nowhere, rather than failing again
    (with a traceback) when the interpreter flushes it at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in streams:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def fail_line(text: str) -> str:
    return f"mlconv: error: {one_line(text)}"


class MlconvGroup(click.Group):
    """``mlconv SRC DST`` means ``mlconv convert SRC DST``; usage errors are one line."""

    def parse_args(self, ctx, args):
        for i, arg in enumerate(args):
            if arg in ("--help", "-h", "--version"):
                break
            if arg == "--debug":
                continue
            if arg.startswith("-") and arg != "-" or arg not in self.commands:
                args = args[:i] + ["convert"] + args[i:]  # a convert option or SRC
            break
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # plain `mlconv`: the help, exit 0
                say(e.ctx.get_help())
                sys.exit(0)
            where = e.ctx.command_path if e.ctx is not None else "mlconv"
            say(fail_line(f"{e.format_message()} (see '{where} --help')"), err=True)
            sys.exit(2)
        except click.ClickException as e:
            say(fail_line(e.format_message()), err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            say("mlconv: aborted", err=True)
            sys.exit(130)
        except _OutputFailed as e:
            with contextlib.suppress(_OutputFailed):
                say(fail_line(str(e)), err=True)
            _discard(sys.stdout, sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _debug_option(f):
    return click.option("--debug", is_flag=True, help="Show tracebacks of errors.")(f)


def _run(ctx: click.Context, debug: bool, action):
    """Run ``action``; user-caused failures become one line and exit 1 (2 for options)."""
    debug = debug or bool((ctx.obj or {}).get("debug"))
    try:
        return action()
    except MlconvError as e:
        if debug:
            _print_traceback()
        say(fail_line(e.render(cli=True)), err=True)
        ctx.exit(2 if isinstance(e, OptionError) else 1)
    except OSError as e:
        if debug:
            _print_traceback()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        say(fail_line(f"{e.strerror or e}{where}"), err=True)
        ctx.exit(1)


@click.group(cls=MlconvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlconv", prog_name="mlconv")
@_debug_option
@click.pass_context
def cli(ctx, debug):
    """Convert, inspect and validate ML files.

    \b
    mlconv SRC DST [options]      convert (same as `mlconv convert SRC DST`)
    mlconv inspect FILE [--json]  entries, dtypes, shapes, metadata (headers only)
    mlconv validate FILE...       structure, every byte decoded, expectations: for CI
    mlconv plan SRC DST           how a conversion would run, step by step
    mlconv formats [--json]       the formats mlconv reads and writes
    """
    ctx.ensure_object(dict)["debug"] = debug


def _limit_options(f):
    """--max-memory and --allow-expand (convert, inspect, validate)."""
    from ..formats.base import MAX_MEMORY, parse_size

    def size(ctx, param, value):
        try:
            return parse_size(value)
        except OptionError as e:
            raise click.BadParameter(e.message) from None

    f = click.option("--allow-expand", is_flag=True,
                     help="Write never-written HDF5 data as its fill values, whatever "
                     "the size.")(f)
    return click.option("--max-memory", default=str(MAX_MEMORY), callback=size,
                        metavar="SIZE", show_default="1GiB",
                        help="Cap on one decoded buffer (chunk, batch, zip member).")(f)


def _compression_help() -> str:
    from ..formats import all_formats

    each = "; ".join(f"{fmt.id}: {'|'.join(fmt.caps.compressions)}" for fmt in all_formats()
                     if fmt.can_write and len(fmt.caps.compressions) > 1)
    return f"Output compression ({each})."


def _format_options(f):
    """Each registered format's own write options as ``--flags``, built from the dataclass
    its module declares (so a new option is one line there). A name several formats
    declare (``layout``) is one flag."""
    from ..formats import flag, write_option_fields

    for name, (field, ids) in reversed(write_option_fields().items()):
        meta = field.metadata
        named = len(ids) == 1 or all(i in meta["help"].lower() for i in ids)
        kwargs = {"help": meta["help"] if named else f"{meta['help']} ({', '.join(ids)})"}
        names = [flag(name)]
        if isinstance(field.default, bool):  # a switch: --x, or --x/--no-x when on by default
            kwargs.update(is_flag=True, default=field.default)
            if field.default:
                names = [f"{flag(name)}/--no-{flag(name)[2:]}"]
        elif meta.get("choices"):
            kwargs["type"] = click.Choice(list(meta["choices"]))
        elif meta.get("minimum") is not None:
            kwargs["type"] = click.IntRange(min=meta["minimum"])
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        f = click.option(*names, name, **kwargs)(f)
    return f


def _own_options(values: dict) -> dict:
    """The format-specific option values out of a command's keyword arguments."""
    from ..formats import write_option_fields

    return {name: values.pop(name) for name in write_option_fields() if name in values}


def _convert_options(f):
    """Options shared by ``convert`` and ``plan``."""
    f = _format_options(f)
    for option in reversed([
        click.option("--from", "from_format", type=FORMAT_IDS,
                     help="Input format (default: detect; needed for SRC '-')."),
        click.option("--to", "to_format", type=FORMAT_IDS,
                     help="Output format (default: extension; needed for DST '-')."),
        click.option("--select", multiple=True, metavar="PATTERN",
                     help="Only these entries (repeatable). A glob, or a name that picks "
                     "itself and everything under it ('/' or '.' separated)."),
        click.option("--exclude", multiple=True, metavar="PATTERN",
                     help="Leave these entries (or table columns: TABLE/COLUMN) out."),
        click.option("--cast", multiple=True, metavar="SRC=DST",
                     help="Convert a dtype, e.g. --cast bfloat16=float32 (repeatable)."),
        click.option("--allow-lossy", is_flag=True,
                     help="Turn each loss (dtype widened, metadata dropped...) into a warning."),
        click.option("--compression", metavar="NAME", help=_compression_help()),
        click.option("--allow-external", is_flag=True,
                     help="Follow HDF5 external links into files in the same folder."),
        click.option("--path", "path", type=click.Choice(["fast", "generic"]), default="fast",
                     show_default=True,
                     help="generic: move every byte through memory (no kernel copies)."),
        click.option("--force", is_flag=True, help="Replace an existing DST."),
    ]):
        f = option(f)
    return f


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="SRC... DST")
@_convert_options
@click.option("--pad", metavar="VALUE", type=float,
              help="Ragged (list) columns into fixed-shape formats: pad rows with VALUE.")
@click.option("--dry-run", is_flag=True, help="Print the plan, write nothing.")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar (default: on a terminal only).")
@click.option("--jobs", type=click.IntRange(min=1), metavar="N",
              help="Files converted at once into a folder (default: cores).")
@click.option("--dask", metavar="ADDRESS",
              help="Files into a folder on Dask: a scheduler (tcp://host:8786) or "
              "local[:N] for a local cluster of N workers.")
@click.option("--split-size", metavar="SIZE",
              help="With --dask: files larger than SIZE (default 1GiB) into tensor formats "
              "are written by several tasks, one per range of tensors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="List every loss, not one line per kind.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
@_limit_options
@_debug_option
@click.pass_context
def convert(ctx, paths, from_format, to_format, select, exclude, cast, allow_lossy,
            compression, allow_external, path, force, pad, dry_run, progress, jobs, dask,
            split_size, as_json, verbose, quiet, max_memory, allow_expand, debug, **own):
    # long: one command's modes (folder, stdio, dry run, one file) read best side by side
    """Convert SRC to DST (format from DST's extension or --to).

    \b
    mlconv in.h5 out.parquet               one file
    mlconv 'in/*.h5' out/ --to parquet     each file into a folder, --jobs at a time
    mlconv a.npz b.npz out/ --to npy       (a list works as a glob does)
    mlconv 'ckpt/*.npy' model.safetensors  many files merged into one
    mlconv - out.npz --from safetensors    '-' is stdin or stdout
    """
    from ..validate import expand

    if len(paths) < 2:
        raise click.UsageError("needs SRC and DST")
    *srcs, dst = paths
    options = dict(from_format=from_format, select=select, exclude=exclude, cast=cast,
                   allow_lossy=allow_lossy, compression=compression,
                   allow_external=allow_external, kernel_copy=path == "fast", overwrite=force,
                   pad=pad, max_memory=max_memory, allow_expand=allow_expand,
                   options=_own_options(own))
    verbosity = -1 if quiet else (1 if verbose else 0)
    show_bar = progress if progress is not None else sys.stderr.isatty()
    many = len(srcs) > 1 or any(c in srcs[0] for c in "*?[")
    if dask is not None:
        options["client"] = dask
        options["split_size"] = _split_size(split_size)
    if dst.endswith(("/", os.sep)) or (os.path.isdir(dst) and dst != "-"):
        if not to_format:
            raise click.UsageError("converting into a folder needs --to FORMAT")
        if dry_run:
            raise click.UsageError("--dry-run takes one DST file")
        _convert_into_folder(ctx, debug, expand(srcs), dst, to_format, options, jobs,
                             show_bar, as_json, verbosity)
        return
    if dask is not None:
        raise click.UsageError("--dask converts many files into a folder (DST/)")
    sources = expand(srcs) if many else srcs[0]
    if "-" in srcs or dst == "-":
        from .stdio import convert_stdio

        if many:
            raise click.UsageError("'-' takes one SRC")
        _run(ctx, debug, lambda: convert_stdio(
            sources, dst, to_format, options,
            lambda report: _print_report(report, as_json, verbosity, to_stderr=dst == "-")))
        return
    from ..convert import convert as run_convert

    if dry_run:
        plan = _run(ctx, debug, lambda: run_convert(sources, dst, to_format=to_format,
                                                    dry_run=True, **options))
        say(json.dumps(plan.as_dict(), indent=2) if as_json else show.plan_text(plan.as_dict()))
        ctx.exit(0 if plan.ok else 1)
    bar = _bar(show_bar, "B")

    def action():
        try:
            return run_convert(sources, dst, to_format=to_format, progress=bar, **options)
        finally:  # gone before any error line is printed
            if bar is not None:
                bar.close()

    report = _run(ctx, debug, action)
    _print_report(report, as_json, verbosity)


def _print_report(report, as_json: bool, verbosity: int, to_stderr: bool = False) -> None:
    print_losses(report.warnings, report.notes, verbosity)
    if as_json:
        say(json.dumps(report.as_dict(), indent=2), err=to_stderr)
    elif verbosity >= 0:
        say(show.report_line(report), err=to_stderr)


def print_losses(losses, notes, verbosity: int) -> None:
    """Warnings on stderr, alike losses counted on one line (``-v``: every entry)."""
    if verbosity < 0:
        return
    groups: dict[str, list] = {}
    for loss in map(as_loss, losses):
        groups.setdefault(loss.what, []).append(loss)
    for what, items in groups.items():
        if len(items) == 1 or verbosity > 0:
            for loss in items:
                say(f"mlconv: warning: {one_line(loss.render(cli=True))}", err=True)
            continue
        paths = {loss.path for loss in items}
        where = f" ({paths.pop()})" if len(paths) == 1 and None not in paths else ""
        say(f"mlconv: warning: {one_line(what)}: {len(items)} entries{where} "
            "(-v lists them)", err=True)
    for note in map(as_loss, notes):
        say(f"mlconv: note: {one_line(note.render(cli=True))}", err=True)


def _split_size(text):
    from ..errors import OptionError
    from ..formats.base import parse_size

    try:
        return None if text is None else parse_size(text)
    except OptionError:
        raise click.BadParameter(f"expects a size such as 512M or 2GiB, not {text!r}",
                                 param_hint="--split-size") from None


def _convert_into_folder(ctx, debug, sources, dst, to_format, options, jobs, show_bar,
                         as_json, verbosity):
    """Each file exactly as one file would go (its warnings, its error or report line),
    then a summary line; exit 1 if any failed."""
    from ..convert import iter_convert_many

    results = _run(ctx, debug, lambda: iter_convert_many(
        sources, dst, to_format=to_format, jobs=jobs, **options))
    results = _run(ctx, debug, lambda: _drain(results))
    bar = _bar(show_bar, "file", total=len(sources))
    done = []
    try:
        for result in results:
            done.append(result)
            if bar is not None:
                bar.clear()
            if not as_json:
                _print_result(result, verbosity)
            if bar is not None:
                bar(1)
    finally:
        if bar is not None:
            bar.close()
    bad = sum(not r.ok for r in done)
    if as_json:
        say(json.dumps([r.as_dict(cli=True) for r in done], indent=2))
    else:
        say(f"{len(done) - bad} converted, {bad} failed")
    ctx.exit(0 if done and not bad else 1)


def _print_result(result, verbosity: int) -> None:
    if not result.ok:
        say(fail_line(result.error.render(cli=True)), err=True)
        return
    print_losses(result.report.warnings, result.report.notes, verbosity)
    if verbosity >= 0:
        say(show.report_line(result.report))


def _drain(results):
    """Pull the first result now, so that an error before any file (a missing output
    folder) is raised inside ``_run``; then hand the rest out lazily."""
    first = next(results, None)
    if first is None:
        return iter(())
    import itertools

    return itertools.chain([first], results)


class _Bar:
    """A tqdm bar on stderr, called with amounts done; ``total`` may be set later."""

    def __init__(self, unit: str, total=None):
        from tqdm import tqdm

        scaled = unit == "B"
        try:  # a terminal that reports no size (a bare pty) would get no bar at all
            sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
        except (OSError, ValueError):
            sized = False
        self._bar = tqdm(total=total, unit=unit, unit_scale=scaled, unit_divisor=1024,
                         file=sys.stderr, leave=False, dynamic_ncols=sized,
                         ncols=None if sized else 80, nrows=None if sized else 24,
                         mininterval=0.2, delay=0.5, desc="mlconv")  # long runs only

    def __call__(self, n: int) -> None:
        self._bar.update(n)

    @property
    def total(self):
        return self._bar.total

    @total.setter
    def total(self, value) -> None:
        self._bar.total = value
        self._bar.refresh()

    def clear(self) -> None:
        self._bar.clear()

    def close(self) -> None:
        self._bar.close()


def _bar(enabled: bool, unit: str, total=None) -> _Bar | None:
    return _Bar(unit, total) if enabled else None


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="SRC... DST")
@_convert_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--graph", "as_graph", is_flag=True,
              help="Print the route through the format graph as Graphviz DOT.")
@_limit_options
@_debug_option
@click.pass_context
def plan(ctx, paths, from_format, to_format, select, exclude, cast, allow_lossy,
         compression, allow_external, path, force, as_json, as_graph, max_memory,
         allow_expand, debug, **own):
    """Show how SRC would become DST: each entry zero-copy, streamed or in-memory, the bytes
    moved, and any loss that would stop it. SRC and DST may also be two format ids."""
    from ..convert import plan as run_plan
    from ..validate import expand

    if len(paths) < 2:
        raise click.UsageError("needs SRC and DST")
    *srcs, dst = paths
    many = len(srcs) > 1 or any(c in srcs[0] for c in "*?[")
    result = _run(ctx, debug, lambda: run_plan(
        expand(srcs) if many else srcs[0], dst, from_format=from_format,
        to_format=to_format, select=select, exclude=exclude, cast=cast,
        allow_lossy=allow_lossy, compression=compression, allow_external=allow_external,
        kernel_copy=path == "fast", overwrite=force, max_memory=max_memory,
        allow_expand=allow_expand, options=_own_options(own)))
    if as_graph:
        from ..convert.graph import edges, plan_dot
        from ..formats import all_formats

        say(plan_dot(result, edges(all_formats())), nl=False)
    else:
        say(json.dumps(result.as_dict(), indent=2) if as_json
            else show.plan_text(result.as_dict()))
    ctx.exit(0 if result.ok else 1)


@cli.command()
@click.argument("file")
@click.option("--from", "from_format", type=FORMAT_IDS, help="Input format (default: detect).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--allow-external", is_flag=True,
              help="Follow HDF5 external links into files in the same folder.")
@_limit_options
@_debug_option
@click.pass_context
def inspect(ctx, file, from_format, as_json, allow_external, max_memory, allow_expand, debug):
    """Show a file's entries, dtypes, shapes, attributes and metadata (reads headers only)."""
    from ..describe import inspect as run_inspect

    manifest = _run(ctx, debug, lambda: run_inspect(
        file, from_format, allow_external=allow_external, max_memory=max_memory,
        allow_expand=allow_expand))
    # in pieces: a million entries make a 100 MB document
    for piece in show.manifest_json(manifest) if as_json else show.manifest_pieces(manifest):
        say(piece, nl=False)
    say("")


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--schema", "schemas", multiple=True, metavar="[GLOB=]EXPECT",
              help="Expectation file (JSON, or YAML with pyyaml); GLOB=EXPECT applies it to "
              "matching files only (repeatable).")
@click.option("--format", "style", type=click.Choice(["text", "json", "junit", "github"]),
              default="text", show_default=True, help="Output for people or CI systems.")
@click.option("--junit-xml", metavar="PATH",
              help="Also write a JUnit XML report to PATH (as pytest does).")
@click.option("--quick", is_flag=True,
              help="Headers only: skip decoding pages, chunks and tensors.")
@click.option("--deep", is_flag=True, hidden=True, help="The default now; kept for old scripts.")
@click.option("--from", "from_format", type=FORMAT_IDS, help="Input format (default: detect).")
@click.option("--allow-external", is_flag=True,
              help="Follow HDF5 external links into files in the same folder.")
@_limit_options
@_debug_option
@click.pass_context
def validate(ctx, files, schemas, style, junit_xml, quick, deep, from_format, allow_external,
             max_memory, allow_expand, debug):
    """Check FILES (globs allowed): structure, every page, chunk and tensor decoded
    (checksums verified where the format has them) and, with --schema, expectations.

    Exit 0 when every file passes, 1 when any fails, 2 on usage errors.
    """
    from .. import expect
    from ..validate import expand, render
    from ..validate import validate as run_validate

    if quick and deep:
        raise click.UsageError("--quick and --deep contradict each other")
    chooser = _run(ctx, debug, lambda: expect.Chooser.from_options(schemas))
    reports = [run_validate(path, chooser.for_file(path), deep=not quick, format=from_format,
                            allow_external=allow_external, max_memory=max_memory,
                            allow_expand=allow_expand)
               for path in expand(files)]
    if junit_xml:
        _run(ctx, debug, lambda: _write_text(junit_xml, render(reports, "junit")))
    say(render(reports, style))
    ctx.exit(0 if all(r.ok for r in reports) else 1)


def _write_text(path: str, text: str) -> None:
    from ..atomic import atomic_output

    with atomic_output(path, overwrite=True) as f:
        f.write(text.encode("utf-8") + b"\n")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@click.option("--graph", "as_graph", is_flag=True,
              help="Print the conversion graph as Graphviz DOT (each edge's cost and losses).")
def formats(as_json, as_graph):
    """List the formats mlconv reads and writes, with their capabilities."""
    import mlconv

    if as_graph:
        from ..convert.graph import edges, to_dot
        from ..formats import all_formats

        say(to_dot(edges(all_formats())), nl=False)
        return
    rows = mlconv.formats()
    if as_json:
        say(json.dumps(rows, indent=2))
    else:
        say(show.formats_text(rows))


def main(argv=None) -> None:
    """The command line, from Python: a bug is one line too (--debug shows its traceback);
    ends with SystemExit like any click command."""
    args = sys.argv[1:] if argv is None else list(argv)
    # mlconv does no linear algebra, yet numpy (imported for h5py) starts OpenBLAS's thread
    # pool: 15-30 ms of every HDF5 start on 2 cores, and a thread competing with the copy.
    # Only the CLI, whose process this is; a user's value wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        cli.main(args=args, prog_name="mlconv")
    except Exception as e:  # a bug, not the user's doing; keep it to one line
        if "--debug" in args:
            _print_traceback()
        say(f"mlconv: internal error: {one_line(f'{type(e).__name__}: {e}')} "
            "(a bug in mlconv; --debug shows the traceback)", err=True)
        sys.exit(1)


def program() -> None:
    """The ``mlconv`` console script and ``python -m mlconv``: ``main()``, then ``_leave``.
    (Code that calls ``main`` keeps its process.)"""
    try:
        main()
    except SystemExit as e:
        _leave(e.code)
        raise


def _leave(code) -> None:
    """End the program without the interpreter's teardown of every module, which costs
    10-20 ms (more with numpy and h5py loaded) and has nothing left to do: outputs are
    closed and published before a command returns. Output is flushed and exit handlers
    run as usual. Where that is not plainly safe (another thread still running, an
    unusual code, output that cannot be flushed) the normal exit runs instead."""
    import atexit
    import threading

    from ..fileio import flush_std

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if threading.active_count() > 1 or run_exit_handlers is None or \
            not (code is None or isinstance(code, int)) or not flush_std():
        return
    run_exit_handlers()
    if not flush_std():  # what the exit handlers printed
        return
    os._exit(code or 0)
