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

from distill.compilation_cache import ENV, host_key, user_cache_dir  # noqa: E402


def test_the_cache_folder_follows_the_environment(tmp_path):
    assert user_cache_dir({ENV: str(tmp_path / "c")}) == str(tmp_path / "c")
    assert user_cache_dir({ENV: "~/xla"}) == os.path.expanduser("~/xla")
    for off in ("off", "", "0", "OFF"):
        assert user_cache_dir({ENV: off, "XDG_CACHE_HOME": str(tmp_path)}) is None
    assert user_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "distill" / "xla")
    assert user_cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "distill", "xla")


def test_machines_with_other_cpu_flags_use_other_subfolders(tmp_path):
    """jax's cache key leaves out the instruction set: a shared folder must not hand AVX-512 code to an AVX2 CPU."""
    avx512, avx2 = tmp_path / "a", tmp_path / "b"
    avx512.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert host_key(str(avx512)) != host_key(str(avx2))
    assert host_key(str(avx512)) == host_key(str(avx512))
    assert host_key(str(tmp_path / "missing"))  # no /proc/cpuinfo (macOS): still a name


def _predict(directory, cache) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "distill.cli", "predict", "--checkpoint", str(directory), "--input",
         "how many apples are left", "--max-decode-length", str(NEW_TOKENS)],
        capture_output=True, text=True, timeout=300, env={**os.environ, ENV: str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _stamps(cache) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in cache.iterdir() if p.name.endswith("-atime")}


def _entries(cache) -> set[str]:
    return {p.name for p in cache.iterdir()}


def test_a_second_predict_reads_the_decoder_the_first_compiled(hf_dir, tmp_path):  # noqa: F811
    directory, _, _ = hf_dir
    first = _predict(directory, tmp_path / "xla")
    assert [p.name for p in (tmp_path / "xla").iterdir()] == [host_key()]
    cache = tmp_path / "xla" / host_key()
    written = _entries(cache)
    stamps = _stamps(cache)
    assert any(name.endswith("-cache") for name in written) and stamps, written
    second = _predict(directory, tmp_path / "xla")
    assert second == first and first.strip()
    assert _entries(cache) == written, "nothing compiled anew"
    assert _stamps(cache) != stamps, "the entries were read"
