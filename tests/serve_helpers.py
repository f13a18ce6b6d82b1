"""A tiny student checkpoint and servers for tests/test_serve.py (and scripts/bench_serve.py).

- `make_student(dir)`: a Hugging Face T5 folder (random tiny T5 v1.1 from model_helpers, a
  SentencePiece vocabulary trained on a few sentences), loadable by `distill.run_dir.load_trained`.
- `ServeProcess`: `distill serve` in a subprocess on a free port, its log in a file; stops by
  SIGTERM (then SIGKILL) with bounded waits, whatever the test does.
- `InProcessServer`: the ASGI app (distill/serve/app.py) under uvicorn in a thread, for tests that
  inject a fake decoder.
- `GatedDecoder`: a fake decoder that echoes its inputs once a gate opens, so a test can hold
  requests in flight without relying on timing.
"""
from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
EOS = 1
MODEL_VOCAB = 128
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a man is playing a guitar on the street",
    "Q: Ann has 3 apples and buys 4 more. How many apples does she have?",
    "[label] [rationale] entailment neutral contradiction So the answer is",
    "she sold four cups of lemonade and two cookies",
] * 20
READY = re.compile(r"distill serve: \S+ on http://[^:/]+:(\d+)/v1")


def make_student(directory: pathlib.Path) -> pathlib.Path:
    """config.json + model.safetensors + spiece.model (pad 0, eos 1, unk 2; ~110 pieces, 128 model rows)."""
    import sentencepiece
    import torch
    from model_helpers import hf_t5_model

    directory.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(directory / "spiece"), vocab_size=110,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", hard_vocab_limit=False, minloglevel=2)
    (directory / "spiece.vocab").unlink()
    model = hf_t5_model("t5_1_1", seed=1, vocab_size=MODEL_VOCAB)
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 3.0  # some answers end before the decode length
    model.save_pretrained(str(directory))
    return directory


class ServeProcess:
    """`distill serve --checkpoint DIR --port 0 ARGS` in a subprocess; `.url` waits until it listens."""

    def __init__(self, checkpoint: pathlib.Path, args: Sequence[str], log: pathlib.Path, *,
                 env: dict[str, str] | None = None, ready_timeout: float = 300.0) -> None:
        self.log = log
        self._ready_timeout = ready_timeout
        self._port: int | None = None
        self._log_handle = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "distill.cli", "serve", "--checkpoint", str(checkpoint), "--port", "0", *args],
            cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=self._log_handle, stderr=subprocess.STDOUT)

    @property
    def port(self) -> int:
        deadline = time.monotonic() + self._ready_timeout
        while self._port is None:
            found = READY.search(self.log.read_text())
            if found:
                self._port = int(found.group(1))
            elif self.process.poll() is not None:
                raise RuntimeError(f"distill serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            elif time.monotonic() > deadline:
                raise TimeoutError(f"distill serve not ready after {self._ready_timeout} s:\n{self.log.read_text()}")
            else:
                time.sleep(0.2)
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code (SIGKILL after `timeout` seconds)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *_) -> None:
        try:
            self.terminate(timeout=30)
        finally:
            self._log_handle.close()


class InProcessServer:
    """An ASGI app under uvicorn on 127.0.0.1 in a daemon thread; `stop` is uvicorn's graceful exit."""

    def __init__(self, app) -> None:
        import uvicorn

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> "InProcessServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise TimeoutError("the in-process server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __exit__(self, *_) -> None:
        self.stop()
        self._socket.close()


class GatedDecoder:
    """A `RowDecoder` (distill/serve/decoder.py) that returns each input without its EOS once `gate` is set.

    calls: (method, row lengths, rng) of every batch, in decode order.
    """

    max_batch_size = 4

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[tuple[str, list[int], tuple]] = []

    def length_bucket(self, length: int) -> int:
        return 16 if length <= 16 else 64

    def decode(self, rows, settings, rng):
        from distill.serve.decoder import Generated

        if not self.gate.wait(60):
            raise TimeoutError("the test never opened the gate")
        self.calls.append((settings.method, [len(row) for row in rows], rng))
        return [Generated(list(row[:-1]), True) for row in rows]


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)
