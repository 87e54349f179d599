"""Timing whole processes: wall time and peak RSS of each child, runs alternated.

Benchmarks are scripts, not tests: they print figures and never fail on them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

PY = sys.executable
# what people type: the console script beside this interpreter (``python -m mlconv`` also
# imports runpy); the module where no script is installed
_SCRIPT = os.path.join(os.path.dirname(PY), "mlconv")
MLCONV = [_SCRIPT] if os.access(_SCRIPT, os.X_OK) else [PY, "-m", "mlconv"]


# A child's ru_maxrss starts at its parent's peak (kept across fork+exec), so where GNU time
# exists it measures the command as its own child; otherwise our peak is a floor.
GNU_TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def run_once(cmd: list[str], cleanup=None) -> tuple[float, float, float]:
    """(seconds, peak RSS in MiB, CPU seconds: user + system) of one child process; raises
    if it fails. CPU time leaves out waiting (for a busy host, for the disk), so on a
    noisy machine it is the steadier figure of what the command itself costs."""
    if cleanup:
        cleanup()
    os.sync()  # no dirty pages from the previous case slowing this one down
    full = [GNU_TIME, "-f", "maxrss=%M cpu=%U+%S", *cmd] if GNU_TIME else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err}")
    kib, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    if GNU_TIME:
        last = err.strip().rsplit("maxrss=", 1)[1]
        kib = int(last.split()[0])
        cpu = sum(float(x) for x in last.split("cpu=", 1)[1].split("+"))
    return elapsed, kib / 1024, cpu


def compare(cases: dict[str, tuple[list[str], object]], runs: int = 5,
            baseline: str = "cp", quiet: bool = False) -> dict[str, tuple]:
    """Run every case ``runs`` times, alternating; print medians, ratios and peak RSS
    (``quiet``: only return them, for a script that prints one table at the end).
    Returns {case: (median s, peak RSS MiB, best s, paired ratio, median CPU s)}. On a
    shared virtual machine, where noise only ever adds time and the machine's speed drifts
    from minute to minute, the best run, the paired ratio (the median over rounds of this
    case's time ÷ the baseline's in the same round) and CPU time are the steadier figures."""
    times = {name: [] for name in cases}
    cpus = {name: [] for name in cases}
    rss = {name: 0.0 for name in cases}
    for cmd, cleanup in cases.values():  # warm-up: page cache, imports
        run_once(cmd, cleanup)
    order = list(cases)
    for i in range(runs):
        for name in order[i % len(order):] + order[:i % len(order)]:  # rotate who goes first
            cmd, cleanup = cases[name]
            t, r, c = run_once(cmd, cleanup)
            times[name].append(t)
            cpus[name].append(c)
            rss[name] = max(rss[name], r)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base_times = times.get(baseline)
    paired = {name: statistics.median(t / b for t, b in zip(ts, base_times, strict=True))
              if base_times else None for name, ts in times.items()}
    got = {name: (med[name], rss[name], min(times[name]), paired[name],
                  statistics.median(cpus[name])) for name in cases}
    if quiet:
        return got
    base = med[baseline]
    print(f"{'case':<34} {'median s':>9} {'x ' + baseline:>8} {'paired':>7} {'best s':>7} "
          f"{'peak RSS MiB':>13}")
    for name in cases:
        print(f"{name:<34} {med[name]:>9.3f} {med[name] / base:>8.2f} {paired[name]:>7.2f} "
              f"{got[name][2]:>7.3f} {rss[name]:>13.1f}")
    return got


def tempdir() -> str:
    return tempfile.mkdtemp(prefix="mlconv-bench-")


def remover(*paths):
    def clean():
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    return clean


def table_columns(rng, n: int) -> dict:
    """The benchmark table's 8 columns as numpy arrays (int64, float64, float32, int32,
    bool, short string, timestamp[s], int8), ``n`` rows."""
    import numpy as np

    return {
        "i64": rng.integers(0, 1 << 40, n), "f64": rng.standard_normal(n),
        "f32": rng.standard_normal(n).astype(np.float32),
        "i32": rng.integers(0, 1 << 30, n).astype(np.int32),
        "flag": rng.integers(0, 2, n).astype(bool),
        "tag": np.array(["alpha", "beta", "gamma", "delta"])[rng.integers(0, 4, n)],
        "ts": np.datetime64("2020-01-01", "s") + rng.integers(0, 10**9, n).astype("m8[s]"),
        "i8": rng.integers(-100, 100, n).astype(np.int8),
    }


def run_function(module_file: str, fn: str, *args) -> None:
    """Call ``fn(*args)`` of a benchmark module in a child (keeps this process's RSS low,
    which every child would otherwise inherit as its starting peak)."""
    here = os.path.dirname(os.path.abspath(__file__))
    name = os.path.splitext(os.path.basename(module_file))[0]
    code = f"import sys; sys.path.insert(0, {here!r}); import {name} as b; b.{fn}(*{args!r})"
    run_once([PY, "-c", code])
