"""The CPU this runs on, as /proc/cpuinfo describes it: its model (benchmark reports name it) and whether it
computes bfloat16 natively (unet_ae's `training.precision: bf16` is fast only where it does)."""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# x86 flags of native bfloat16 arithmetic (AVX512-BF16, AMX); on Arm the feature is `bf16`
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpuinfo_lines(path: Path = CPUINFO) -> list[str] | None:
    try:
        return path.read_text().splitlines()
    except OSError:
        return None  # not Linux (or no /proc): unknown


def cpu_model(path: Path = CPUINFO) -> str:
    """The architecture and, where /proc/cpuinfo names it, the CPU model: `x86_64 (AMD EPYC ...)`. Training
    takes another path on another CPU model (float rounding), so a figure names the one it was drawn on."""
    arch = platform.machine()
    lines = _cpuinfo_lines(path) or []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return f"{arch} ({model})" if model else arch


def native_bf16(path: Path = CPUINFO) -> bool | None:
    """Whether the CPU has bfloat16 instructions (its `flags`, or on Arm `Features`, name one of
    BF16_FLAGS); None where /proc/cpuinfo cannot tell (another OS)."""
    lines = _cpuinfo_lines(path)
    if lines is None:
        return None
    flags = set()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags:
        return None
    return not flags.isdisjoint(BF16_FLAGS)
