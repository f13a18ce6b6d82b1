"""What this machine's CPU can do, as /proc/cpuinfo lists it (Linux; elsewhere nothing is known)."""
from __future__ import annotations

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
    flags = cpu_flags(cpuinfo) or []
    return "avx512_bf16" in flags or "amx_bf16" in flags
