"""The ``mlconv`` command: words in, exit codes out. The only place that prints or exits.

Exit codes: 0 success, 1 the data is at fault (one line ``mlconv: error: ...``), 2 usage.
"""

from __future__ import annotations

import json
import sys
import traceback

import click

from ..errors import MlconvError, OptionError
from ..formats import IDS
from . import show

FORMAT_IDS = click.Choice(list(IDS), case_sensitive=False)


class DefaultToConvert(click.Group):
    """``mlconv SRC DST`` means ``mlconv convert SRC DST``."""

    def parse_args(self, ctx, args):
        for i, arg in enumerate(args):
            if arg in ("--help", "-h", "--version"):
                break
            if not arg.startswith("-"):
                if arg not in self.commands:
                    args = args[:i] + ["convert"] + args[i:]
                break
        return super().parse_args(ctx, args)


def _debug_option(f):
    return click.option("--debug", is_flag=True, help="Show tracebacks of errors.")(f)


def _run(ctx: click.Context, debug: bool, action):
    """Run ``action``; user-caused failures become one line and exit 1 (2 for options)."""
    debug = debug or bool((ctx.obj or {}).get("debug"))
    try:
        return action()
    except MlconvError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"mlconv: error: {e}", err=True)
        ctx.exit(2 if isinstance(e, OptionError) else 1)
    except OSError as e:
        if debug:
            traceback.print_exc()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        click.echo(f"mlconv: error: {e.strerror or e}{where}", err=True)
        ctx.exit(1)


@click.group(cls=DefaultToConvert, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlconv", prog_name="mlconv")
@_debug_option
@click.pass_context
def cli(ctx, debug):
    """Convert, inspect and validate ML files.

    \b
    mlconv SRC DST [options]      convert (same as `mlconv convert SRC DST`)
    mlconv inspect FILE [--json]  entries, dtypes, shapes, metadata (headers only)
    mlconv validate FILE...       structure and expectations, for CI
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


def _convert_options(f):
    """Options shared by ``convert`` and ``plan``."""
    for option in reversed([
        click.option("--from", "from_format", type=FORMAT_IDS,
                     help="Input format (default: detect)."),
        click.option("--to", "to_format", type=FORMAT_IDS,
                     help="Output format (default: extension)."),
        click.option("--select", multiple=True, metavar="GLOB",
                     help="Only these entries (repeatable)."),
        click.option("--exclude", multiple=True, metavar="GLOB", help="Leave these entries out."),
        click.option("--cast", multiple=True, metavar="SRC=DST",
                     help="Convert a dtype, e.g. --cast bfloat16=float32 (repeatable)."),
        click.option("--allow-lossy", is_flag=True,
                     help="Turn each loss (dtype widened, metadata dropped...) into a warning."),
        click.option("--compression", metavar="NAME",
                     help="Output compression (npz: none|deflate; hdf5: none|gzip|lzf; "
                     "parquet: zstd|snappy|lz4|gzip|none; arrow: none|lz4|zstd)."),
        click.option("--layout", type=click.Choice(["rows", "entries"]),
                     help="Tensors into Parquet/Arrow: one row per sample or per tensor."),
        click.option("--allow-external", is_flag=True,
                     help="Follow HDF5 external links into files in the same folder."),
        click.option("--path", "path", type=click.Choice(["fast", "generic"]), default="fast",
                     show_default=True,
                     help="generic: move every byte through memory (no kernel copies)."),
    ]):
        f = option(f)
    return f


@cli.command()
@click.argument("src")
@click.argument("dst", type=click.Path())
@_convert_options
@click.option("--row-group-size", type=click.IntRange(min=1), metavar="ROWS",
              help="Rows per Parquet row group.")
@click.option("--template", type=click.Path(dir_okay=False), metavar="MODEL.onnx",
              help="ONNX output: replace the initializers of this model.")
@click.option("--external-data", is_flag=True,
              help="ONNX output: tensor bytes in DST.data (automatic over 2 GiB).")
@click.option("--force", is_flag=True, help="Replace an existing DST.")
@click.option("--dry-run", is_flag=True, help="Print the plan, write nothing.")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar (default: on a terminal only).")
@click.option("--jobs", type=click.IntRange(min=1), metavar="N",
              help="Files converted at once when SRC is a glob (default: cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_limit_options
@_debug_option
@click.pass_context
def convert(ctx, src, dst, from_format, to_format, select, exclude, cast, allow_lossy,
            compression, layout, allow_external, path, row_group_size, template,
            external_data, force, dry_run, progress, jobs, as_json, max_memory, allow_expand,
            debug):
    """Convert SRC to DST (format from DST's extension or --to).

    With a glob SRC ('in/*.h5') or a folder DST, converts every file into DST --to FORMAT,
    --jobs at a time; one bad file never stops the others.
    """
    import os

    from ..convert import convert as run_convert
    from ..convert import convert_many
    from ..validate import expand

    options = dict(from_format=from_format, select=select, exclude=exclude, cast=cast,
                   allow_lossy=allow_lossy, compression=compression,
                   allow_external=allow_external, layout=layout, path=path,
                   max_memory=max_memory, allow_expand=allow_expand)
    show_bar = progress if progress is not None else sys.stderr.isatty()
    if any(c in src for c in "*?[") or os.path.isdir(dst) or dst.endswith(os.sep):
        if not to_format:
            raise click.UsageError("converting many files needs --to FORMAT")
        if dry_run:
            raise click.UsageError("--dry-run takes one SRC and one DST")
        sources = expand([src])
        results = _run(ctx, debug, lambda: convert_many(
            sources, dst, to_format=to_format, jobs=jobs, overwrite=force,
            row_group_size=row_group_size, **options))
        click.echo(json.dumps(results, indent=2) if as_json else show.many_text(results))
        ctx.exit(0 if results and all(r["ok"] for r in results) else 1)
    if dry_run:
        plan = _run(ctx, debug, lambda: run_convert(src, dst, to_format=to_format,
                                                    dry_run=True, **options))
        click.echo(json.dumps(plan.as_dict(), indent=2) if as_json
                   else show.plan_text(plan.as_dict()))
        ctx.exit(0 if plan.ok else 1)
    bar = _bar(show_bar)
    try:
        report = _run(ctx, debug, lambda: run_convert(
            src, dst, to_format=to_format, overwrite=force, row_group_size=row_group_size,
            progress=bar, template=template, external_data=external_data, **options))
    finally:
        if bar is not None:
            bar.close()
    for w in report.warnings:
        click.echo(f"mlconv: warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(show.report_line(report))


def _bar(enabled: bool):
    """A tqdm byte counter on stderr, or None; convert() sets its total once it knows it."""
    if not enabled:
        return None
    from tqdm import tqdm

    class Bar(tqdm):
        def __call__(self, n: int) -> None:
            self.update(n)

    return Bar(total=None, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
               leave=False, dynamic_ncols=True, mininterval=0.2, desc="mlconv")


@cli.command()
@click.argument("src")
@click.argument("dst")
@_convert_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@_debug_option
@click.pass_context
def plan(ctx, src, dst, from_format, to_format, select, exclude, cast, allow_lossy,
         compression, layout, allow_external, path, as_json, debug):
    """Show how SRC would become DST: each entry zero-copy, streamed or in-memory, the bytes
    moved, and any loss that would stop it. SRC and DST may also be two format ids."""
    from ..convert import plan as run_plan

    result = _run(ctx, debug, lambda: run_plan(
        src, dst, from_format=from_format, to_format=to_format, select=select,
        exclude=exclude, cast=cast, allow_lossy=allow_lossy, compression=compression,
        allow_external=allow_external, layout=layout, path=path))
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json
               else show.plan_text(result.as_dict()))
    ctx.exit(0 if result.ok else 1)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--from", "from_format", type=FORMAT_IDS, help="Input format (default: detect).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--allow-external", is_flag=True,
              help="Follow HDF5 external links into files in the same folder.")
@_limit_options
@_debug_option
@click.pass_context
def inspect(ctx, file, from_format, as_json, allow_external, max_memory, allow_expand, debug):
    """Show a file's entries, dtypes, shapes and metadata (reads headers only)."""
    from ..describe import inspect as run_inspect

    manifest = _run(ctx, debug, lambda: run_inspect(
        file, from_format, allow_external=allow_external, max_memory=max_memory,
        allow_expand=allow_expand))
    if as_json:
        click.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
    else:
        click.echo(show.manifest_text(manifest))


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--schema", "schema", type=click.Path(dir_okay=False), metavar="EXPECT",
              help="Expectation file (JSON, or YAML with pyyaml) the files must meet.")
@click.option("--format", "style", type=click.Choice(["text", "json", "junit", "github"]),
              default="text", show_default=True, help="Output for people or CI systems.")
@click.option("--deep", is_flag=True, help="Also read every byte (pages, CRCs, batches).")
@_limit_options
@_debug_option
@click.pass_context
def validate(ctx, files, schema, style, deep, max_memory, allow_expand, debug):
    """Check FILES (globs allowed): structure and, with --schema, expectations.

    Exit 0 when every file passes, 1 when any fails, 2 on usage errors.
    """
    from .. import expect
    from ..validate import expand, render
    from ..validate import validate as run_validate

    expectation = _run(ctx, debug, lambda: expect.load(schema)) if schema else None
    reports = [run_validate(path, expectation, deep=deep, max_memory=max_memory,
                            allow_expand=allow_expand) for path in expand(files)]
    click.echo(render(reports, style))
    ctx.exit(0 if all(r.ok for r in reports) else 1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def formats(as_json):
    """List the formats mlconv reads and writes, with their capabilities."""
    import mlconv

    rows = mlconv.formats()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(show.formats_text(rows))


def main(argv=None) -> None:
    """Console entry point: a bug is one line too (--debug shows its traceback)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        cli.main(args=args, prog_name="mlconv")
    except Exception as e:  # a bug, not the user's doing; keep it to one line
        if "--debug" in args:
            traceback.print_exc()
        click.echo(f"mlconv: internal error: {type(e).__name__}: {e} "
                   "(a bug in mlconv; --debug shows the traceback)", err=True)
        sys.exit(1)
