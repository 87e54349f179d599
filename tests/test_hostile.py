"""Every hostile-file class of issue 11, run as the installed CLI in a subprocess: a clear
error (exit 1, one line on stderr, never "internal error", never a signal), peak RSS under
1 GiB and under 30 s of CPU (wall time capped at 60 s: a hang is a failure), and no file
opened outside the input's folder (audited with ``sys.addaudithook`` in the CLI process and
in the HDF5 guard and validate children).

The generators are in tests/hostile.py; the three commands of a case run two at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .hostile import CASES

ROOT = Path(__file__).resolve().parents[1]
RSS_LIMIT_KIB = 1 << 20      # 1 GiB
SECONDS = 30
RLIMIT_AS = 12 << 30         # a runaway child must not take the machine down with it

WRAPPER = """
import os, resource, sys
from mlconv.formats.isolation import audit_from_env
audit_from_env()
from mlconv.cli.main import main
try:
    main(sys.argv[1:])
finally:
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    with open(os.environ["MLCONV_RSS_LOG"], "w") as f:
        f.write(f"{max(me.ru_maxrss, kids.ru_maxrss)} {cpu}")
"""

# what Python and the libraries open for themselves (modules, locale, /proc...)
_SYSTEM = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix, str(ROOT / "mlconv"),
                 sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"],
                 "/proc/", "/sys/", "/dev/null", "/dev/urandom", "/etc/localtime",
                 "/usr/share/zoneinfo", "/etc/ld.so", "/usr/lib/", "/lib/"})


def _limits():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (RLIMIT_AS, RLIMIT_AS))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _run(args, folder: Path, tag: str, wall: int = 2 * SECONDS) -> dict:
    audit, rss = folder / f".audit-{tag}", folder / f".rss-{tag}"
    env = dict(os.environ, MLCONV_AUDIT_LOG=str(audit), MLCONV_RSS_LOG=str(rss),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    t0 = time.monotonic()
    try:
        res = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True,
                             timeout=wall, env=env, preexec_fn=_limits,
                             stdin=subprocess.DEVNULL, check=False)
        code, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = "timeout", e.stdout or b"", e.stderr or b""
    seconds = time.monotonic() - t0
    opened = audit.read_bytes().decode("utf-8", "replace").splitlines() \
        if audit.exists() else []
    rss_kib, cpu = rss.read_text().split() if rss.exists() else (None, None)
    return {"code": code, "stdout": out.decode("utf-8", "replace"),
            "stderr": err.decode("utf-8", "replace"), "wall": seconds,
            "seconds": float(cpu) if cpu is not None else seconds,
            "rss_kib": int(rss_kib) if rss_kib is not None else None, "opened": opened}


def _outside(opened, allowed) -> list[str]:
    bad = []
    for p in opened:
        if p.startswith(_SYSTEM) or any(p == a or p.startswith(a + os.sep) for a in allowed):
            continue
        bad.append(p)
    return bad


@pytest.mark.parametrize("name", list(CASES))
def test_hostile(tmp_path, name):
    case = CASES[name]
    folder = tmp_path / "in"
    folder.mkdir()
    src = case.make(folder)
    dst = folder / ("out" + case.to)
    commands = {"inspect": ["inspect", src], "convert": ["convert", src, dst],
                "validate": ["validate", src]}
    if case.json:
        commands["inspect --json"] = ["inspect", "--json", src]
    with ThreadPoolExecutor(2 if case.wall >= 2 * SECONDS else 3) as pool:  # 2 cores; hangs idle
        futures = {cmd: pool.submit(_run, [*args, *case.args.get(cmd, [])], tmp_path,
                                    cmd.replace(" ", ""), case.wall)
                   for cmd, args in commands.items()}
        results = {cmd: f.result() for cmd, f in futures.items()}
    allowed = [os.path.realpath(os.path.dirname(src)), os.path.realpath(folder),
               str(tmp_path)]
    if os.environ.get("MLCONV_CACHE_DIR"):  # mlconv's own verdicts, never the input's data
        allowed.append(os.path.realpath(os.environ["MLCONV_CACHE_DIR"]))
    problems = []
    for cmd, r in results.items():
        where = f"{cmd}: {r['stderr'][-300:]!r} {r['stdout'][-300:]!r}"
        if r["code"] not in case.exits.get(cmd, (1,)):
            problems.append(f"{cmd} exited {r['code']} ({where})")
        if "internal error" in r["stderr"] + r["stdout"] or "Traceback" in r["stderr"]:
            problems.append(f"{cmd} hit an internal error ({where})")
        if r["code"] == 1 and cmd != "validate":
            lines = r["stderr"].strip().splitlines()
            if len(lines) != 1 or not lines[0].startswith("mlconv: error: ") or \
                    len(lines[0]) > 2000:
                problems.append(f"{cmd}: not one error line ({where})")
        if r["seconds"] > SECONDS:  # CPU seconds: fair on a shared machine; hangs time out
            problems.append(f"{cmd} took {r['seconds']:.0f} s of CPU ({r['wall']:.0f} s)")
        if r["rss_kib"] is not None and r["rss_kib"] > RSS_LIMIT_KIB:
            problems.append(f"{cmd} peaked at {r['rss_kib'] >> 10} MiB")
        if cmd == "inspect --json" and r["code"] == 0:
            try:
                json.loads(r["stdout"])
            except ValueError as e:
                problems.append(f"{cmd} printed invalid JSON: {e}")
        bad = _outside(r["opened"], allowed)
        if bad:
            problems.append(f"{cmd} opened outside the input's folder: {bad[:5]}")
    if os.path.lexists(dst) and results["convert"]["code"] != 0:
        problems.append("convert failed but left DST")
    assert not problems, "\n".join(problems)
