"""The CPU a process runs on: its model name and the instruction-set features the project's choices depend on
(bfloat16 training, the inference runtime), read once from the operating system.

Choices made from it (training precision, the runtime that serves a version) are logged with the CPU that made
them, and every benchmark prints :func:`describe` next to its numbers, because the machines of one kind differ:
an AMD Zen 4 has AVX-512 with VNNI and BF16, an AMD Zen 1 only AVX2 (executed as two 128-bit halves).

``CPU_ASSUME=avx2`` (settings) makes a bigger CPU behave as an AVX2-only one for the project and for TensorFlow:
the AVX-512/AMX features are hidden from the project's choices (bfloat16, oneDNN: training then decides as on such
a CPU, and sets ``TF_ENABLE_ONEDNN_OPTS`` itself), and :func:`apply_assumption` (called before TensorFlow is
imported) caps oneDNN's kernels at AVX2. LiteRT's XNNPACK and ONNX Runtime dispatch on the real CPU whatever this
says: the assumption reproduces training's arithmetic, not inference speed.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

ASSUMPTIONS = ("avx2",)
# The features that decide something here (x86 names as Linux spells them; Arm's "bf16" from its Features line).
RELEVANT = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "bf16",
)
# What an AVX2-only x86 CPU lacks: hidden under CPU_ASSUME=avx2.
_BEYOND_AVX2 = ("avx512", "amx", "avx_vnni")


@dataclass(frozen=True)
class CpuInfo:
    """One CPU as the project sees it: ``flags`` are the operating system's feature names (lower case)."""

    model: str
    machine: str  # platform.machine(): x86_64, aarch64, ...
    flags: frozenset[str] = field(default_factory=frozenset)
    cores: int = 1
    assumed: str | None = None  # "avx2": a bigger CPU told to behave as an AVX2-only one
    # x86 "family F model M": the generation, where a virtual machine's model name hides it ("Intel(R) Xeon(R)
    # Processor"); AMD Zen 1 is family 23 model 1
    family: str = ""

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "i386")

    @property
    def is_arm(self) -> bool:
        return self.machine.lower() in ("aarch64", "arm64")

    @property
    def native_bf16(self) -> list[str]:
        """The features that run bfloat16 arithmetic in hardware (empty: bfloat16 would be emulated)."""
        if self.is_x86:
            return [f for f in ("avx512_bf16", "amx_bf16") if self.has(f)]
        if self.is_arm:
            return ["bf16"] if self.has("bf16") else []
        return []

    @property
    def vector_isa(self) -> str:
        """The widest x86 vector extension: ``avx512``, ``avx2``, ``older``; the machine name elsewhere."""
        if not self.is_x86:
            return self.machine
        if self.has("avx512f"):
            return "avx512"
        return "avx2" if self.has("avx2") else "older"

    def relevant_flags(self) -> list[str]:
        return [f for f in RELEVANT if self.has(f)]

    def describe(self) -> str:
        """One line for logs and benchmark headers, e.g. ``AMD EPYC 7551 (x86_64, 2 cores; AVX2 FMA; no AVX-512)``."""
        shown = " ".join(f.upper() for f in self.relevant_flags()) or "no relevant features"
        if self.is_x86 and not self.has("avx512f"):
            shown += "; no AVX-512"
        assumed = f"; assumed {self.assumed} (CPU_ASSUME)" if self.assumed else ""
        family = f", {self.family}" if self.family else ""
        return f"{self.model} ({self.machine}{family}, {self.cores} cores; {shown}{assumed})"

    def params(self) -> dict[str, str]:
        """MLflow params/tags naming the CPU that made a choice."""
        return {
            "cpu_model": (f"{self.model} ({self.family})" if self.family else self.model)[:250],
            "cpu_flags": " ".join(self.relevant_flags()) or "-",
            "cpu_vector_isa": self.vector_isa,
            "cpu_cores": str(self.cores),
            "cpu_assumed": self.assumed or "-",
        }


def parse_cpuinfo(text: str, machine: str, cores: int, assume: str | None = None) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (the first processor's entry is enough)."""
    model, flags, ids = "", set(), {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "cpu model", "processor") and not model and not value.strip().isdigit():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.lower().split())
        elif key in ("cpu family", "model") and key not in ids and value.strip().isdigit():
            ids[key] = value.strip()
        elif key == "cpu part" and not model:
            model = f"Arm CPU part {value.strip()}"
    if assume is not None:
        if assume not in ASSUMPTIONS:
            raise ValueError(f"CPU_ASSUME must be one of {', '.join(ASSUMPTIONS)}, got {assume!r}")
        flags = {f for f in flags if not f.startswith(_BEYOND_AVX2)}
    family = f"family {ids['cpu family']} model {ids['model']}" if len(ids) == 2 else ""
    return CpuInfo(model or platform.processor() or "unknown CPU", machine, frozenset(flags), cores, assume, family)


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=4)
def detect_cpu(assume: str | None = None) -> CpuInfo:
    """This machine's CPU (``assume``: the ``CPU_ASSUME`` setting); read once per process."""
    path = Path("/proc/cpuinfo")
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine(), _usable_cores(), assume or None)


def describe(assume: str | None = None) -> str:
    """``detect_cpu(assume).describe()`` and the oneDNN variables that change TensorFlow's kernels, if set: what
    each benchmark prints next to its numbers."""
    knobs = [f"{k}={os.environ[k]}" for k in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)]
    return detect_cpu(assume).describe() + (f" [{', '.join(knobs)}]" if knobs else "")


def onednn_enabled(cpu: CpuInfo, environ: dict[str, str] | None = None) -> bool:
    """Whether TensorFlow computes with oneDNN here: ``TF_ENABLE_ONEDNN_OPTS`` if set, else TensorFlow's own
    default on x86 Linux (on only for CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX)."""
    env = os.environ if environ is None else environ
    raw = env.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
    if raw in ("0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    if not cpu.is_x86:
        return False
    return any(cpu.has(f) for f in ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"))


def apply_assumption(assume: str | None) -> None:
    """Make TensorFlow (imported after this call) compute as it would on the assumed CPU: with ``avx2``, oneDNN's
    kernels capped at AVX2 (whether oneDNN is on at all is the caller's choice, as on such a CPU: TensorFlow's own
    default there is off). A value the user set is kept."""
    if not assume:
        return
    detect_cpu(assume)  # validates the name
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
