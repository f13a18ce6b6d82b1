"""Fixtures shared by every test module: the repo root and the real data dir.

The paper's cached teacher outputs are read through DISTILL_DATA_DIR (CI
points it at ../shared/data); tests that need them skip cleanly without it,
and tests of record shapes use small fixtures they write themselves.
"""
import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# `distill predict` and `distill serve` keep compiled programs in a per-user cache folder
# (distill/compilation_cache.py); tests leave the user's folder alone, and the tests of the
# cache point it at a temporary folder.
os.environ["DISTILL_COMPILATION_CACHE"] = "off"

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _shared_data_dir() -> pathlib.Path | None:
    env = os.environ.get("DISTILL_DATA_DIR")
    candidates = [pathlib.Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "svamp").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The paper's SVAMP/CQA data (read-only); skips the test when absent."""
    found = _shared_data_dir()
    if found is None:
        pytest.skip("DISTILL_DATA_DIR (the paper's svamp/cqa data) is not available")
    return found
