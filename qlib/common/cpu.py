"""This machine's CPU: its model name, the ISA features that decide which int8/bf16 kernels can run, and its class
(the bottom layer: provenance, the int8 path and the benchmark all read it from here)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Iterable

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""The CPU features that decide which int8/bf16 kernels a run can use (the CPU class: AVX2 only, AVX-512 VNNI, AMX)."""

CPU_CLASSES = {"AMX": "amx", "AVX-512 VNNI": "avx512-vnni", "AVX2": "avx2"}
"""Each CPU class and the short name its benchmark files carry."""


def _cpuinfo_line(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` says)."""
    return _cpuinfo_line("model name") or platform.processor() or platform.machine()


CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
"""Where Linux describes the first core's caches (one ``index<n>`` folder per cache)."""


def cpu_identity(caches_folder: Path | None = None) -> dict[str, Any]:
    """What tells two machines of one CPU class and model name apart: family, model, stepping and microcode
    (``/proc/cpuinfo``) and the size of each cache level (``caches_folder``), which GEMM libraries may tune their loop
    blocking to, so float results can differ in their last bits between two such machines (default folder:
    ``CACHES``). Values that cannot be read are None; ``caches`` maps ``L1d``, ``L1i``, ``L2``, ``L3`` to sizes as
    the kernel writes them (``48K``)."""
    caches = {}
    for index in sorted(Path(caches_folder or CACHES).glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        caches[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = size
    model = _cpuinfo_line("model\t")  # the tab tells "model : 167" from "model name : ..."
    return {"family": _cpuinfo_line("cpu family"), "model": model, "stepping": _cpuinfo_line("stepping"),
            "microcode": _cpuinfo_line("microcode"), "caches": caches}


def cpu_features() -> list[str]:
    """Which of ``ISA_FLAGS`` this CPU has (from ``/proc/cpuinfo``; [] where it cannot be read)."""
    flags = set((_cpuinfo_line("flags") or "").split())
    return [f for f in ISA_FLAGS if f in flags]


def has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 rows mean something."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def cpu_class(features: Iterable[str] | None = None) -> str:
    """The CPU class of ``features`` (default: this CPU's): ``AMX``, ``AVX-512 VNNI``, ``AVX2``, or "" when none
    of them (or nothing) was recorded."""
    features = set(cpu_features() if features is None else features)
    return ("AMX" if "amx_int8" in features else "AVX-512 VNNI" if "avx512_vnni" in features
            else "AVX2" if "avx2" in features else "")
