"""core.machine: the CPU model benchmark reports name, and whether the CPU has bfloat16 instructions."""

from __future__ import annotations

import platform
from pathlib import Path

from anomaly_spotter.core.machine import cpu_model, native_bf16

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 i8mm
"""


def test_bf16_instructions_are_read_from_the_cpu_flags(tmp_path: Path) -> None:
    files = {}
    for name, text in {"epyc": EPYC, "xeon": XEON, "arm": ARM, "empty": ""}.items():
        files[name] = tmp_path / name
        files[name].write_text(text)
    assert native_bf16(files["epyc"]) is True
    assert native_bf16(files["xeon"]) is False  # AVX-512 without its BF16 extension
    assert native_bf16(files["arm"]) is True
    assert native_bf16(files["empty"]) is None  # no flags line: cannot tell
    assert native_bf16(tmp_path / "missing") is None  # no /proc/cpuinfo (macOS, Windows)
    assert cpu_model(files["epyc"]) == f"{platform.machine()} (AMD EPYC 9B14)"
    assert cpu_model(files["arm"]) == platform.machine()  # no model name: the architecture alone
