"""Facts about the machine that measurements are written with."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

# The instruction-set extensions that decide how fast (and how exactly) torch's CPU kernels run,
# in the order they are shown: x86 first, then Arm.
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimdhp",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
    "sme",
)


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _sysctl(*keys: str) -> str:
    """macOS's ``sysctl -n`` for ``keys`` (empty where there is no sysctl or no such key)."""
    try:
        out = subprocess.run(["sysctl", "-n", *keys], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")
        if name:
            return name
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Those of :data:`CPU_FLAGS` the CPU has, in that order: read from ``/proc/cpuinfo``
    (``flags`` on x86, ``Features`` on Arm), from ``sysctl`` on macOS, else torch's own
    reading of the CPU (``avx2``, ``avx512``, or nothing)."""
    have: set[str] = set()
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            have.update(value.split())
    if not have and platform.system() == "Darwin":
        words = _sysctl("machdep.cpu.features", "machdep.cpu.leaf7_features").lower().split()
        have.update(w.replace(".", "_") for w in words)
        if _sysctl("hw.optional.neon") == "1":
            have.add("asimd")
        for flag in ("bf16", "i8mm", "sme"):
            if _sysctl(f"hw.optional.arm.FEAT_{flag.upper()}") == "1":
                have.add(flag)
    if not have:
        import torch

        capability = torch.backends.cpu.get_cpu_capability().lower()
        return [capability] if capability.startswith("avx") else []
    return [f for f in CPU_FLAGS if f in have]


def gpu_name() -> str:
    """The CUDA GPU's name (``2 x <name>`` for two), or empty where torch sees none."""
    import torch

    if not torch.cuda.is_available():
        return ""
    n = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    return name if n == 1 else f"{n} x {name}"


def device_name(device: str = "cpu") -> str:
    """The GPU's name for a CUDA device, else the CPU's."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()
