"""The XLA:CPU setting of the decoding processes (`distill serve`, `distill predict`).

A decode step multiplies a few rows (the batch) by each weight matrix: small
products that XLA:CPU hands to Eigen, multi-threaded by default. On a few
cores the threads cost more than they save, and in `distill serve` they
straggle behind the event loop that shares the cores. Single-threaded Eigen
decodes faster offline and serves faster (README.md, "Serving the student",
measured with scripts/bench_serve.py side by side). XLA reads the flag when
jax creates its CPU backend, so entry points call this first thing; a choice
the user made in XLA_FLAGS is kept. Training is left as it is: its large
products are spread over the cores.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

FLAG = "--xla_cpu_multi_thread_eigen"


def single_threaded_eigen(environ: MutableMapping[str, str] = os.environ) -> None:
    """Adds --xla_cpu_multi_thread_eigen=false to XLA_FLAGS unless XLA_FLAGS already sets it."""
    flags = environ.get("XLA_FLAGS", "")
    if FLAG not in flags:
        environ["XLA_FLAGS"] = f"{flags} {FLAG}=false".strip()
