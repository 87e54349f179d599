"""The house's shape, checked: import floors, format knowledge only in ``formats/``, short
functions, format plugins through entry points, losses as data."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mlconv
from mlconv.formats import IDS

PKG = Path(mlconv.__file__).parent

# cli -> api -> convert/validate -> formats -> model/dtypes; never upward
FLOORS = {
    "mlconv.cli": 4, "mlconv.__main__": 4,
    "mlconv": 3,  # the package's __init__: the API
    "mlconv.convert": 2, "mlconv.validate": 2, "mlconv.describe": 2, "mlconv.expect": 2,
    "mlconv.dataset": 2, "mlconv.opening": 2, "mlconv.storage": 2,
    "mlconv.formats": 1,
}
BOTTOM = 0  # errors, dtypes, model, sources, columns, fileio, atomic, lru, version, schemas


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _floor(module: str) -> int:
    if module == "mlconv":
        return FLOORS["mlconv"]
    best = None
    for prefix, floor in FLOORS.items():
        if prefix != "mlconv" and (module == prefix or module.startswith(prefix + ".")):
            best = floor
    return BOTTOM if best is None else best


def _imports(module: str, path: Path):
    """Every mlconv module ``module`` imports, at any depth of its code."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mlconv"):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("mlconv"):
                for alias in node.names:  # "from . import x" imports the module x
                    sub = f"{name}.{alias.name}"
                    yield (sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists()
                           or (PKG.parent / sub.replace(".", "/")).is_dir() else name,
                           node.lineno)


def test_imports_never_go_up_a_floor():
    upward = []
    for module, path in _modules():
        for target, line in _imports(module, path):
            if _floor(target) > _floor(module):
                upward.append(f"{path.relative_to(PKG.parent)}:{line} {module} -> {target}")
    assert not upward, "\n".join(upward)


def _docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_no_module_outside_formats_names_a_format():
    """Format knowledge lives in formats/: no string outside it is a format id."""
    found = []
    for module, path in _modules():
        if module.startswith("mlconv.formats"):
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    id(node) not in docs and node.value.lower() in IDS:
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.value!r}")
    assert not found, "\n".join(found)


def test_the_checks_above_catch_what_they_guard(tmp_path):
    """Broken on purpose: an upward import and a format id are found."""
    bad = tmp_path / "mlconv" / "formats" / "x.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..cli import main\n")
    assert [t for t, _ in _imports("mlconv.formats.x", bad)] == ["mlconv.cli.main"]
    assert _floor("mlconv.cli.main") > _floor("mlconv.formats.x")
    tree = ast.parse('"""doc"""\nif fmt.id == "parquet":\n    pass\n')
    docs = _docstrings(tree)
    names = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and id(n) not in docs]
    assert names == ["parquet"]


MAX_LINES = 50


def test_no_long_function_without_a_reason():
    """A function over ~50 lines says why in a comment on its first body line
    (``# long: ...``)."""
    long = []
    for _module, path in _modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                span = "\n".join(lines[node.lineno - 1:node.end_lineno])
                if n > MAX_LINES and "# long:" not in span:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} "
                                f"{node.name} ({n} lines)")
    assert not long, "\n".join(long)


def test_a_format_plugin_joins_through_an_entry_point(tmp_path):
    """A third party's format, registered by an entry point in the ``mlconv.formats``
    group, is listed, detected, read, written, planned and drawn: no change to mlconv."""
    site = tmp_path / "site"
    (site / "textvec").mkdir(parents=True)
    (site / "textvec" / "__init__.py").write_text(textwrap.dedent('''
        import numpy as np
        from mlconv.dtypes import DType
        from mlconv.formats.base import Capabilities, Format
        from mlconv.model import Bundle, Tensor

        class TextVec(Format):
            def read(self, path, options):
                with open(path) as f:
                    values = [float(v) for v in f.read().split()[1:]]
                b = Bundle(path=path, format=self.id)
                b["v"] = Tensor.from_numpy(np.array(values, np.float64))
                return b

            def write(self, bundle, f, path, options):
                for name, t in bundle.items():
                    f.write(("TEXTVEC " + " ".join(map(repr, t.numpy().tolist())) + "\\n")
                            .encode())

        FORMAT = TextVec(id="textvec", description="floats as text (a test plugin)",
                         extensions=(".tv",), magic=(b"TEXTVEC",),
                         caps=Capabilities(dtypes=frozenset({DType.float64}), max_entries=1))
    '''))
    dist = site / "textvec-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: textvec\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlconv.formats]\ntextvec = textvec:FORMAT\n")
    np.save(tmp_path / "a.npy", np.arange(5, dtype=np.float64))
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    mlconv_cli = str(Path(sys.executable).with_name("mlconv"))

    def run(*args):
        res = subprocess.run([mlconv_cli, *args], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "textvec" in [f["id"] for f in json.loads(run("formats", "--json"))]
    run("a.npy", "b.tv")
    assert (tmp_path / "b.tv").read_text().startswith("TEXTVEC 0.0 1.0")
    assert json.loads(run("inspect", "b.tv", "--json"))["format"] == "textvec"
    run("b.tv", "c.npy")
    assert np.array_equal(np.load(tmp_path / "c.npy"), np.arange(5, dtype=np.float64))
    assert '"textvec:tensors"' in run("formats", "--graph")
    assert '"npy:array" -> "textvec:tensors"' in run("plan", "a.npy", "d.tv", "--graph")


def test_losses_are_data():
    from mlconv.convert import decide, fit
    from mlconv.errors import Loss
    from mlconv.formats import get

    b = mlconv.Bundle({"w": np.ones(3, dtype=np.complex64)})
    b.metadata = {"k": "v"}
    fitted, losses = decide(b, get("npz"))
    kinds = {x.kind for x in losses}
    assert "metadata" in kinds and all(isinstance(x, Loss) for x in losses)
    meta = next(x for x in losses if x.kind == "metadata")
    assert meta.way_out == "--allow-lossy" and meta.refusal.endswith("use --allow-lossy")
    with pytest.raises(mlconv.MlconvError, match="has no file metadata"):
        fit(b, get("npz"))


def test_library_words_name_format_options_as_options():
    from mlconv.errors import MlconvError

    def words(text):
        return MlconvError(text).render()

    assert words("use --layout entries") == "use options={'layout': 'entries'}"
    assert words("use --external-data") == "use options={'external_data': True}"
    assert words("--template does not match") == "options['template'] does not match"
    assert words("output exists; use --force to replace it") == \
        "output exists; use overwrite=True to replace it"


def test_format_options_come_from_the_registry(tmp_path):
    """Each format's write-options dataclass is its CLI flags and its API options; one
    given to a format that does not declare it is a usage error naming those that do."""
    import dataclasses

    from click.testing import CliRunner

    from mlconv.cli import cli
    from mlconv.errors import OptionError
    from mlconv.formats import all_formats, flag

    help_text = CliRunner().invoke(cli, ["convert", "--help"]).output
    for fmt in all_formats():
        for f in dataclasses.fields(fmt.write_options) if fmt.write_options else ():
            assert flag(f.name) in help_text
    np.save(tmp_path / "a.npy", np.arange(4.0))
    res = CliRunner().invoke(cli, [str(tmp_path / "a.npy"), str(tmp_path / "b.npz"),
                                   "--layout", "rows"], catch_exceptions=False)
    assert res.exit_code == 2
    assert res.output.strip() == "mlconv: error: --layout applies to parquet, arrow output only"
    with pytest.raises(OptionError, match="must be rows or entries"):
        mlconv.convert(tmp_path / "a.npy", tmp_path / "c.parquet",
                       options={"layout": "diagonal"})
    from mlconv.formats import get

    typed = get("parquet").write_options(row_group_size=2)
    mlconv.convert(tmp_path / "a.npy", tmp_path / "d.parquet", options=typed)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "d.parquet").metadata.num_row_groups == 2
    assert not (tmp_path / "b.npz").exists() and not (tmp_path / "c.parquet").exists()


def test_routes_follow_the_data_and_reach_the_same_format(tmp_path):
    """Review findings: a format to itself is a route; a table starts from the table node;
    quantized blocks from the blocks node; --layout entries ends at the entries node."""
    from mlconv.convert.graph import edges, route
    from mlconv.formats import all_formats

    graph = edges(all_formats())
    for fmt in all_formats():
        for rep, *_ in fmt.representations:
            assert route(graph, (fmt.id, rep), fmt.id), (fmt.id, rep)
    assert [e.dst for e in route(graph, ("npy", "structured"), "npy")] == [("npy", "structured")]
    st = tmp_path / "a.safetensors"
    mlconv.save({"w": np.ones((4, 3), np.float32)}, st)
    plan = mlconv.plan(st, tmp_path / "b.parquet", options={"layout": "entries"})
    assert [e.dst for e in plan.route] == [("parquet", "entries")]
    assert [s.method for s in plan.steps] == ["in-memory"]
    assert [e.dst for e in mlconv.plan(st, tmp_path / "c.safetensors").route] == \
        [("safetensors", "tensors")]


def test_a_broken_plugin_never_stops_mlconv(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mlconv.formats]\nbroken = no_such_module:FORMAT\n")
    np.save(tmp_path / "a.npy", np.arange(3.0))
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    cli = str(Path(sys.executable).with_name("mlconv"))
    ok = subprocess.run([cli, "inspect", "a.npy"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    asked = subprocess.run([cli, "a.npy", "b.x", "--to", "broken"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert asked.returncode in (1, 2) and "Traceback" not in asked.stderr
    assert "no_such_module" in asked.stderr and len(asked.stderr.strip().splitlines()) == 1
