"""A short smoke run of the fuzz harness in the suite (hypothesis picks the mutations; each
case in a forked child, so a library crash fails the test, not the run); run
``python -m tests.fuzz.harness TARGET --seconds N`` by hand for the long runs."""

import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import TARGETS, mutate, run_isolated, warm

_SEEDS: dict = {}


def _seed(name):
    if name not in _SEEDS:
        _SEEDS[name] = warm(name)[0]
    return _SEEDS[name]


@pytest.mark.parametrize("name", [t for t in TARGETS if t != "hdf5"])
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(rng_seed=st.integers(0, 2**32 - 1))
def test_mutated_files_raise_only_mlconv_errors(name, rng_seed):
    data = mutate(_seed(name), random.Random(rng_seed))
    with tempfile.TemporaryDirectory() as folder:
        assert run_isolated(data, TARGETS[name][1], folder) is None


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(rng_seed=st.integers(0, 2**32 - 1))
def test_mutated_hdf5_files_raise_only_mlconv_errors(rng_seed):
    """HDF5 goes through the crash guard (a child per file), so fewer examples."""
    data = mutate(_seed("hdf5"), random.Random(rng_seed))
    with tempfile.TemporaryDirectory() as folder:
        assert run_isolated(data, ".h5", folder) is None


def test_arrow_that_ends_early_is_an_error_not_an_abort(tmp_path):
    """A finding: pyarrow's EOFError reached click, which reads it as Ctrl-D ("aborted",
    exit 130). It is a corrupt file: exit 1 with one line."""
    import subprocess
    import sys
    from pathlib import Path

    data = mutate(_seed("arrow"), random.Random(14132440))
    with tempfile.TemporaryDirectory() as folder:
        assert run_isolated(data, ".arrow", folder) is None
    src = tmp_path / "short.arrow"
    src.write_bytes(data)
    mlconv = str(Path(sys.executable).with_name("mlconv"))
    for args in (["inspect", src], [src, tmp_path / "o.npz"], ["validate", src]):
        res = subprocess.run([mlconv, *map(str, args)], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 1 and "aborted" not in res.stderr, (args, res.stderr)
