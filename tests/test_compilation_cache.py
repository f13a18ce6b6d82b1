"""The persistent compilation cache of `distill predict` (distill/compilation_cache.py).

A real `python -m distill.cli predict` process runs twice on one cache folder: the first writes the
compiled decoder there, the second reads it back (jax's size-bounded cache stamps an entry's
"-atime" file on every read) and prints the same prediction.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_predict_cli import NEW_TOKENS, hf_dir  # noqa: E402,F401  (the module's HF checkpoint fixture)

from distill.compilation_cache import ENV, user_cache_dir  # noqa: E402


def test_the_cache_folder_follows_the_environment(tmp_path):
    assert user_cache_dir({ENV: str(tmp_path / "c")}) == str(tmp_path / "c")
    assert user_cache_dir({ENV: "~/xla"}) == os.path.expanduser("~/xla")
    for off in ("off", "", "0", "OFF"):
        assert user_cache_dir({ENV: off, "XDG_CACHE_HOME": str(tmp_path)}) is None
    assert user_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "distill" / "xla")
    assert user_cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "distill", "xla")


def _predict(directory, cache) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "distill.cli", "predict", "--checkpoint", str(directory), "--input",
         "how many apples are left", "--max-decode-length", str(NEW_TOKENS)],
        capture_output=True, text=True, timeout=300, env={**os.environ, ENV: str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _stamps(cache) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in cache.iterdir() if p.name.endswith("-atime")}


def test_a_second_predict_reads_the_decoder_the_first_compiled(hf_dir, tmp_path):  # noqa: F811
    directory, _, _ = hf_dir
    cache = tmp_path / "xla"
    first = _predict(directory, cache)
    written = {p.name for p in cache.iterdir()}
    stamps = _stamps(cache)
    assert any(name.endswith("-cache") for name in written) and stamps, written
    second = _predict(directory, cache)
    assert second == first and first.strip()
    assert {p.name for p in cache.iterdir()} == written, "nothing compiled anew"
    assert _stamps(cache) != stamps, "the entries were read"
