"""The installed ``mlconv`` as a person runs it: under a pseudo-terminal (a progress bar may
show) and piped, for every pair of formats and for many files at once. Both runs must agree:
the same exit code, one-line errors, never an internal error, the same output files."""

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mlconv
from mlconv.formats import IDS, get

MLCONV = str(Path(sys.executable).with_name("mlconv"))
EXT = {fid: get(fid).extensions[0] for fid in IDS}


def run_tty(args, cwd, timeout=120, size=(24, 80)):
    """(exit code, what the terminal showed): stdin, stdout and stderr on a pty of ``size``
    (rows, columns); (0, 0) is a pty that reports no size."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen([MLCONV, *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, cwd=cwd, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"mlconv {' '.join(map(str, args))} hung under a terminal")
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
    return code, out.decode("utf-8", "replace").replace("\r\n", "\n")


def run_piped(args, cwd, timeout=120):
    res = subprocess.run([MLCONV, *map(str, args)], cwd=cwd, capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return res.returncode, res.stdout, res.stderr


def sources(folder: Path) -> dict[str, Path]:
    """One small file of weights per format, plus tables where the format holds them."""
    folder.mkdir()
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
               "b": np.arange(3, dtype=np.int64)}
    out = {}
    for fid in IDS:
        path = folder / f"weights{EXT[fid]}"
        mlconv.save({"w": tensors["w"]} if fid == "npy" else tensors, path)
        out[fid] = path
    table = pa.table({"x": np.arange(50, dtype=np.int64), "y": np.linspace(0, 1, 50),
                      "s": [f"r{i}" for i in range(50)]})
    pq.write_table(table, folder / "frame.parquet")
    out["parquet-table"] = folder / "frame.parquet"
    with h5py.File(folder / "frame.h5", "w") as f:
        f["t"] = np.array([(i, i / 2) for i in range(50)], dtype=[("a", "<i4"), ("b", "<f8")])
    out["hdf5-table"] = folder / "frame.h5"
    return out


@pytest.fixture(scope="module")
def src_files(tmp_path_factory):
    return sources(tmp_path_factory.mktemp("tty") / "src")


def same_output(a: Path, b: Path) -> bool:
    if a.read_bytes() == b.read_bytes():
        return True
    with mlconv.open(a) as x, mlconv.open(b) as y:  # HDF5 files differ in object headers
        return list(x) == list(y) and all(
            np.array_equal(x[n].numpy(), y[n].numpy()) for n in x if x[n].kind == "tensor")


def check_pair(src: Path, fid: str, folder: Path, extra=()):
    tty_dst, pipe_dst = folder / f"tty{EXT[fid]}", folder / f"pipe{EXT[fid]}"
    args = ["--allow-lossy", *extra]
    code_t, shown = run_tty([src, tty_dst, *args], folder)
    code_p, out, err = run_piped([src, pipe_dst, *args], folder)
    where = f"{src.name} -> {fid}"
    assert "internal error" not in shown + err and "Traceback" not in shown + err, where
    assert code_t == code_p and code_t in (0, 1), (where, shown, err)
    if code_p == 1:
        errors = err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("mlconv: error: "), (where, err)
        assert errors[0] in shown.splitlines(), (where, shown)
        assert not tty_dst.exists() and not pipe_dst.exists()
    else:
        assert "\x1b" not in err and "\r" not in err, where  # no bar when piped
        assert out.startswith("wrote "), where
        assert same_output(tty_dst, pipe_dst), where
    return code_p


@pytest.mark.parametrize("source", [*IDS, "parquet-table", "hdf5-table"])
def test_every_pair_under_a_terminal_and_piped(source, src_files, tmp_path):
    def one(fid):
        folder = tmp_path / fid
        folder.mkdir()
        return check_pair(src_files[source], fid, folder)

    with ThreadPoolExecutor(3) as pool:
        codes = dict(zip(IDS, pool.map(one, IDS), strict=True))
    # weights convert everywhere (npy holds one of two); tables into every table format
    wanted = [f for f in IDS if (not source.endswith("table") or get(f).caps.tables)
              and (source in ("npy", "parquet-table", "hdf5-table")
                   or get(f).caps.max_entries is None)]
    assert all(codes[f] == 0 for f in wanted), codes


def test_progress_bar_shows_on_a_terminal_only(tmp_path):
    src = tmp_path / "big.npy"  # 64 MiB of noise to deflate: long enough for a bar (0.5 s)
    np.save(src, np.random.default_rng(0).integers(0, 255, (8192, 8192), np.uint8))
    for size, dst in (((24, 80), "a.npz"), ((0, 0), "a0.npz")):
        code, shown = run_tty([src, tmp_path / dst, "--compression", "deflate"], tmp_path,
                              size=size)
        bar = [line for line in shown.replace("\r", "\n").splitlines()
               if line.startswith("mlconv:")]
        assert code == 0 and bar and ("%" in bar[0] or "B/s" in bar[0]), (size, shown)
    code, out, err = run_piped([src, tmp_path / "b.npz", "--compression", "deflate"],
                               tmp_path)
    assert code == 0 and err == ""
    # --progress off a terminal: a bar on stderr, never a crash (tables included)
    code, out, err = run_piped([src_table(tmp_path), tmp_path / "t.arrow", "--progress"],
                               tmp_path)
    assert code == 0 and "internal error" not in err


def src_table(folder: Path) -> Path:
    path = folder / "t.parquet"
    pq.write_table(pa.table({"x": list(range(1000)), "s": ["a"] * 1000}), path)
    return path


def test_many_files_under_a_terminal_and_piped(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        mlconv.save({"w": np.full((2, 2), i, np.float32), "h": np.zeros(2, np.float16)},
                    src / f"m{i}.safetensors")
    (src / "bad.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{not json at all}")
    for runner, name in ((run_tty, "tty"), (run_piped, "pipe")):
        out_dir = tmp_path / name
        out_dir.mkdir()
        result = runner([str(src / "*.safetensors"), f"{out_dir}/", "--to", "npz",
                         "--jobs", "2"], tmp_path)
        text = "".join(result[1:])
        assert result[0] == 1, text
        assert "internal error" not in text
        assert text.count("mlconv: error: ") == 1 and "bad.safetensors" in text
        assert "3 converted, 1 failed" in text
        assert sorted(os.listdir(out_dir)) == ["m0.npz", "m1.npz", "m2.npz"]
    for i in range(3):
        assert (tmp_path / "tty" / f"m{i}.npz").read_bytes() == \
            (tmp_path / "pipe" / f"m{i}.npz").read_bytes()


@pytest.mark.parametrize("args, code", [
    (["inspect", "x.npy"], 0), (["inspect", "--json", "x.npy"], 0), (["formats"], 0),
    (["validate", "x.npy"], 0), (["x.npy", "y.npz"], 0),
    (["validate", "bad.npy"], 1),  # the verdict is the exit code, read or not
    (["many/*.npy", "out/", "--to", "npz"], 0),  # and every file is converted
])
def test_a_reader_that_leaves_drops_the_output_not_the_work(tmp_path, args, code):
    """``mlconv ... | head`` where head has gone before mlconv writes: what nobody reads
    is dropped, nothing on stderr, and the command runs to its own end and exit code
    (click made every such run exit 1; a flush at exit would print a traceback)."""
    np.save(tmp_path / "x.npy", np.arange(10))
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    (tmp_path / "many").mkdir()
    (tmp_path / "out").mkdir()
    for i in range(12):
        np.save(tmp_path / "many" / f"m{i}.npy", np.arange(i + 1))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before mlconv starts
    proc = subprocess.run([MLCONV, *args], stdout=write, stderr=subprocess.PIPE,
                          cwd=tmp_path, timeout=120, check=False)
    os.close(write)
    assert proc.returncode == code
    assert proc.stderr == b"" or code == 1
    if "many/*.npy" in args:
        assert len(list((tmp_path / "out").glob("*.npz"))) == 12


@pytest.mark.parametrize("args", [["x.npy", "y.npz"], ["inspect", "--json", "x.npy"],
                                  ["x.h5", "y.npz"]])
def test_started_with_stdout_closed(tmp_path, args):
    """``mlconv x.npy y.npz >&-``: Python has no sys.stdout at all; the work is done, exit 0,
    no traceback (the exit, and the HDF5 guard's fork, flushed None)."""
    np.save(tmp_path / "x.npy", np.arange(10))
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = np.arange(10)
    env = dict(os.environ, MLCONV_HDF5_GUARD="1", MLCONV_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(["sh", "-c", 'exec "$0" "$@" >&-', MLCONV, *args],
                          stderr=subprocess.PIPE, cwd=tmp_path, env=env, timeout=120,
                          check=False)
    assert (proc.returncode, proc.stderr) == (0, b"")
    if "y.npz" in args:
        assert np.load(tmp_path / "y.npz")["x"].tolist() == list(range(10))


EXIT_PROBE = """
import atexit, sys, threading

class Teardown:
    def __del__(self):  # a module global: deleted in the interpreter's teardown
        sys.__stderr__.write("teardown\\n")

mark = Teardown()
atexit.register(lambda: sys.__stderr__.write("atexit\\n"))
if sys.argv[1] == "thread":
    threading.Thread(target=threading.Event().wait, args=(0.5,)).start()
sys.argv = ["mlconv", *sys.argv[2:]]
from mlconv.cli import program
program()
"""


@pytest.mark.parametrize("thread", [False, True])
@pytest.mark.parametrize("args, code", [(["inspect", "x.npy"], 0),
                                        (["inspect", "missing.npy"], 1),
                                        (["inspect", "--bogus"], 2)])
def test_the_program_skips_the_interpreters_teardown(tmp_path, args, code, thread):
    """Run as the program (the console script, ``python -m mlconv``), mlconv ends without
    tearing down every module (10-20 ms), after flushing its output and running exit
    handlers; with another thread running it exits normally (which waits for the thread).
    Exit codes and output are the same either way."""
    np.save(tmp_path / "x.npy", np.arange(10))
    proc = subprocess.run([sys.executable, "-c", EXIT_PROBE, "thread" if thread else "-",
                           *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == code
    lines = proc.stderr.splitlines()
    assert "atexit" in lines and ("teardown" in lines) == thread
    assert len([line for line in lines if line.startswith("mlconv")]) == (code != 0)
    if code == 0:
        assert proc.stdout.startswith("path ") and proc.stdout.endswith("\n")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["inspect", "x.npy"], ["inspect", "--json", "x.npy"],
                                  ["formats"]])
def test_stdout_on_a_full_disk_is_one_line(tmp_path, args):
    """Output that cannot be written is the user's to fix, said in one line and exit 1:
    it was an 'internal error (a bug in mlconv)'."""
    np.save(tmp_path / "x.npy", np.arange(10))
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([MLCONV, *args], stdout=full, stderr=subprocess.PIPE,
                              cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode() == \
        "mlconv: error: cannot write to stdout: No space left on device\n"


def test_what_exit_handlers_print_is_not_lost(tmp_path):
    """Output buffered by an exit handler (stdout a pipe, not a terminal) is flushed before
    the program leaves."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('from a handler'))\n"
            "sys.argv = ['mlconv', 'formats']\n"
            "from mlconv.cli import program\n"
            "program()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.endswith("from a handler\n")


def test_main_called_from_python_keeps_its_process(monkeypatch, capsys):
    """``main()`` with sys.argv, from a test or a script, ends in SystemExit, never os._exit
    (that is ``program``, the console script's)."""
    from mlconv.cli import main

    monkeypatch.setattr(sys, "argv", ["mlconv", "formats"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None) and "safetensors" in capsys.readouterr().out
