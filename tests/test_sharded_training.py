"""Sharded training equals 1-device training: meshes of fake CPU devices, and 2 JAX processes.

Both run in subprocesses (XLA_FLAGS must be set before JAX starts). Dropout is
on, so the tests also show the dropout masks do not depend on the mesh.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT = 600


def _run(args, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(proc):
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out[-4000:]
    return out


def _assert_same_training(ref, other, initial=None):
    """Losses within float32 noise; params within 1e-5 of each leaf's scale."""
    np.testing.assert_allclose(other["losses"], ref["losses"], rtol=1e-5)
    names = [k for k in ref.files if k != "losses"]
    assert sorted(names) == sorted(k for k in other.files if k != "losses")
    for name in names:
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(other[name], ref[name], rtol=0, atol=1e-5 * scale, err_msg=name)
    if initial is not None:  # the steps moved the params far more than the tolerance
        moved = max(np.abs(ref[n] - initial[n]).max() / np.abs(ref[n]).max() for n in names)
        assert moved > 1e-3


def test_meshes_give_the_same_loss_and_params(tmp_path):
    _finish(_run([HERE / "sharded_worker.py", tmp_path]))
    specs = json.loads((tmp_path / "specs.json").read_text())
    assert specs["2x4_2d"]["mesh"] == {"data": 2, "model": 4}
    assert specs["4x2"]["param_axes"] == ["model"]  # 1D rules: only the model axis
    assert specs["2x4_2d"]["param_axes"] == ["data", "model"]  # 2D rules: embed over data too
    assert "data" in specs["2x4_2d"]["opt_axes"]  # optimizer state follows the params
    ref = np.load(tmp_path / "1x1.npz")
    initial = np.load(tmp_path / "initial.npz")
    for name in ("8x1", "4x2", "2x4_2d"):
        _assert_same_training(ref, np.load(tmp_path / f"{name}.npz"), initial)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """2 processes x 2 CPU devices (jax.distributed, gloo) == 1 process x 4 devices.

    Each of the 2 processes feeds half of the global batch; the workers also
    save and restore a multi-host orbax checkpoint.
    """
    port = _free_port()
    multi, single = tmp_path / "multi", tmp_path / "single"
    multi.mkdir()
    single.mkdir()
    worker = HERE / "multiprocess_worker.py"
    procs = [_run([worker, multi, pid, 2, port, 2]) for pid in (0, 1)]
    reference = _run([worker, single, 0, 1, 0, 4])
    for proc in [*procs, reference]:
        _finish(proc)
    assert (multi / "checkpoints" / "3").is_dir()
    _assert_same_training(np.load(single / "result.npz"), np.load(multi / "result.npz"))
