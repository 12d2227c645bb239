"""What this CPU's instruction set means for integer (int8) inference, torch-free.

int8 convolutions and matrix products run on different instructions per CPU, and they do not all compute
the same sums:

* ``x86-vnni``: AVX-512 VNNI or AVX-VNNI (``vpdpbusd``): u8 x s8 products accumulated in 32 bits.
* ``x86-avx512`` / ``x86-avx2`` / ``x86-sse``: no VNNI: ``vpmaddubsw`` multiplies u8 x s8 and adds *pairs*
  of products into a **saturating 16-bit** sum before widening. A pair larger than 32767 is clipped: an
  int8 graph whose weights use the full [-128, 127] range can give wrong results here and right ones on a
  VNNI machine (onnxruntime's and OpenVINO's documentation describe this).
* ``arm64-dot`` / ``arm64-neon`` / ``generic``: 32-bit (or wider) accumulation; nothing saturates.

:func:`cpu_info` reads the flags (Linux ``/proc/cpuinfo``, macOS ``sysctl``); :func:`int8_kernels` maps
them to one of the classes above. :mod:`sam3edge.runtime.int8_scheme` decides from them whether a bundle's
int8 arithmetic is safe on a host.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

# the flags that decide int8 / bf16 kernels, in the order a reader expects them
ISA_FLAGS = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "bf16")

#: int8 kernel classes whose u8 x s8 pair sums saturate at 16 bits
SATURATING = ("x86-avx512", "x86-avx2", "x86-sse")

KERNEL_CLASSES = {
    "x86-vnni": "u8 x s8 products accumulated in 32 bits (VNNI vpdpbusd)",
    "x86-avx512": "u8 x s8 pairs summed in saturating 16 bits (vpmaddubsw, AVX-512BW without VNNI)",
    "x86-avx2": "u8 x s8 pairs summed in saturating 16 bits (vpmaddubsw, AVX2 without VNNI)",
    "x86-sse": "u8 x s8 pairs summed in saturating 16 bits (pmaddubsw, SSE4.1)",
    "arm64-dot": "8-bit dot products accumulated in 32 bits (sdot / udot)",
    "arm64-neon": "8-bit products widened to 16 bits and accumulated in 32 bits (NEON)",
    "generic": "no known saturating int8 instruction",
}

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM = ("aarch64", "arm64")


@dataclass(frozen=True)
class CpuInfo:
    """machine (x86_64, aarch64 ...), model name, the :data:`ISA_FLAGS` it has, and its int8 kernel class."""

    machine: str
    model: str
    isa: tuple[str, ...]
    int8_kernels: str

    @property
    def saturating(self) -> bool:
        """Whether u8 x s8 pair sums saturate at 16 bits on this CPU."""
        return self.int8_kernels in SATURATING

    def describe(self) -> str:
        """One line for figures and messages, e.g. ``AMD EPYC, x86_64 AVX2 FMA (no AVX-512, no VNNI)``."""
        shown = [f.upper().replace("_", "-") for f in self.isa if f not in ("sse4_1", "avx", "f16c", "asimd")]
        missing = []
        if self.machine.lower() in _X86:
            if "avx512f" not in self.isa:
                missing.append("no AVX-512")
            if self.int8_kernels != "x86-vnni":
                missing.append("no VNNI")
        tail = f" ({', '.join(missing)})" if missing else ""
        return f"{self.model}, {self.machine} {' '.join(shown) or 'baseline ISA'}{tail}"

    def to_json(self) -> dict:
        return asdict(self) | {"isa": list(self.isa), "describe": self.describe()}


def int8_kernels(machine: str, flags: set[str] | frozenset[str]) -> str:
    """The int8 kernel class (a key of :data:`KERNEL_CLASSES`) of a CPU with these flags."""
    m = machine.lower()
    if m in _X86:
        if "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags:
            return "x86-vnni"
        if "avx512bw" in flags:
            return "x86-avx512"
        if "avx2" in flags:
            return "x86-avx2"
        return "x86-sse"
    if m in _ARM:
        return "arm64-dot" if {"asimddp", "dotprod"} & set(flags) else "arm64-neon"
    return "generic"


def _linux_flags() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _macos_flags() -> tuple[str, set[str]]:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    model = sysctl("machdep.cpu.brand_string")
    names = {"avx1_0": "avx", "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "sse4_1": "sse4_1"}
    flags = {names.get(f, f) for f in (f.lower().replace(".", "_") for f in (
        sysctl("machdep.cpu.features") + " " + sysctl("machdep.cpu.leaf7_features")).split())}
    if sysctl("hw.optional.arm.FEAT_DotProd") == "1":
        flags.add("asimddp")
    if sysctl("hw.optional.arm.FEAT_I8MM") == "1":
        flags.add("i8mm")
    return model, flags


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This host's CPU (read once per process)."""
    machine = platform.machine() or "unknown"
    model, flags = _macos_flags() if platform.system() == "Darwin" else _linux_flags()
    if machine.lower() in _ARM and platform.system() == "Darwin":
        flags.add("asimddp")  # every Apple silicon core has the dot-product instructions
    flags = {f.lower() for f in flags}
    return CpuInfo(machine=machine, model=model or platform.processor() or machine,
                   isa=tuple(f for f in ISA_FLAGS if f in flags), int8_kernels=int8_kernels(machine, flags))
