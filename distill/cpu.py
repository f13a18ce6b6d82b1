"""What this machine's CPU can do, as /proc/cpuinfo lists it (Linux; elsewhere nothing is known)."""
from __future__ import annotations

import sys

CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str = CPUINFO) -> list[str] | None:
    """The first processor's feature flags (x86 `flags`, Arm `Features`); [] without such a line, None unreadable."""
    try:
        with open(cpuinfo) as handle:
            line = next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        return None
    return line.split(":", 1)[1].split() if ":" in line else []


def native_bfloat16(cpuinfo: str = CPUINFO) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (avx512_bf16 or AMX): there bfloat16 products
    run at up to twice the float32 rate (README.md, "Throughput"); elsewhere XLA emulates them, slower."""
    return _multiplies_bfloat16(cpu_flags(cpuinfo) or [])


def _multiplies_bfloat16(flags: list[str]) -> bool:
    return "avx512_bf16" in flags or "amx_bf16" in flags


def emulated_bfloat16_note(operand_dtype: str, backend: str, cpuinfo: str = CPUINFO) -> str | None:
    """A one-line note when the products multiply bfloat16 operands on an x86 CPU without bfloat16
    instructions: XLA converts them there, so they run slower than float32 ones (README.md, "On a
    CPU without bfloat16 instructions": 42 against 60 examples/s). None elsewhere, and where the
    CPU's flags cannot be read."""
    flags = cpu_flags(cpuinfo)
    if operand_dtype != "bfloat16" or backend != "cpu" or not flags or "avx2" not in flags:
        return None
    if _multiplies_bfloat16(flags):
        return None
    return (f"note: bfloat16 products on this CPU (no avx512_bf16 or AMX in {cpuinfo}) are converted by XLA "
            "and run slower than float32 ones; float32 products (T5Config.matmul_dtype = 'float32', "
            "--matmul-dtype float32) are faster here")


def print_emulated_bfloat16_note(operand_dtype: str) -> None:
    """Prints `emulated_bfloat16_note` for jax's default backend to stderr, if there is one
    (`distill train` and `distill predict`, once at start-up)."""
    import jax

    note = emulated_bfloat16_note(operand_dtype, jax.default_backend())
    if note:
        print(note, file=sys.stderr, flush=True)
