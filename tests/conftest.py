import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs are reproducible: the same examples every time (locally they vary)
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = Path(os.environ.get("MLCONV_CORPUS", ROOT.parent / "shared" / "corpus"))


def corpus_files(*formats_):
    """manifest.json rows of the shared corpus for these formats (empty when absent)."""
    manifest = CORPUS / "manifest.json"
    if not manifest.exists():
        return []
    rows = json.loads(manifest.read_text())["files"]
    return [r for r in rows if r["format"] in formats_]


def corpus_params(rows):
    """``rows`` as test parameters named by path; without the corpus, one skipped test that
    says why (instead of pytest's "got empty parameter set")."""
    if not rows:
        reason = f"shared corpus not present at {CORPUS} (set MLCONV_CORPUS)" \
            if not (CORPUS / "manifest.json").exists() else "no corpus file of this kind"
        return [pytest.param(None, id="no-corpus", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(r, id=r["path"]) for r in rows]


@pytest.fixture
def corpus():
    if not CORPUS.exists():
        pytest.skip("shared corpus not present")
    return CORPUS


def listdir_clean(folder) -> list[str]:
    """Names in a folder; used to prove no temp file is left behind."""
    return sorted(os.listdir(folder))


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory, monkeypatch):
    """Each test its own cache folder: no HDF5 guard verdict leaks between tests or into ~."""
    monkeypatch.setenv("MLCONV_CACHE_DIR", str(tmp_path_factory.mktemp("mlconv-cache")))
