"""What the CPU offers that matters for int8 inference, and how many physical cores this process may use.

Read from /proc/cpuinfo (Linux); both functions take the file's text so they can be tested on any
machine. Elsewhere they fall back to os.cpu_count() and an empty flag list."""

from __future__ import annotations

import os
import platform

# Instruction sets that decide how fast int8 runs, grouped as they are usually named.
INT8_FLAGS = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f", "avx512bw", "avx512vl"),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "AMX": ("amx_int8", "amx_tile"),
    "NEON": ("asimd", "neon"),
    "dotprod": ("asimddp",),
    "i8mm": ("i8mm",),
}


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return fh.read()
    except OSError:
        return ""


def _blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in text.split("\n\n"):
        entry = {}
        for line in chunk.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                entry[key.strip()] = value.strip()
        if entry:
            blocks.append(entry)
    return blocks


def physical_cores(text: str | None = None, allowed: set[int] | None = None) -> int:
    """Physical cores among the CPUs this process may run on: distinct (physical id, core id) pairs
    of the allowed logical CPUs, so hyper-threads are counted once. Falls back to the number of
    allowed CPUs, then os.cpu_count()."""
    text = _read_cpuinfo() if text is None else text
    if allowed is None:
        try:
            allowed = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            allowed = None
    cores = set()
    for block in _blocks(text):
        if "processor" not in block or "core id" not in block:
            continue
        try:
            cpu = int(block["processor"])
        except ValueError:
            continue
        if allowed is None or cpu in allowed:
            cores.add((block.get("physical id", "0"), block["core id"]))
    if cores:
        return len(cores)
    if allowed:
        return len(allowed)
    return os.cpu_count() or 1


def int8_features(text: str | None = None) -> dict:
    """{'model': CPU name, 'flags': the int8-relevant flags present, 'isa': {group: bool}, 'summary': 'AVX2, no VNNI'}.
    A group counts as present when all its flags are (AVX-512: f, bw and vl), except VNNI, AMX, NEON
    where any one flag is enough (avx512_vnni or avx_vnni; amx_int8 or amx_tile; asimd or neon)."""
    text = _read_cpuinfo() if text is None else text
    blocks = _blocks(text)
    first = blocks[0] if blocks else {}
    flags = set((first.get("flags") or first.get("Features") or "").split())
    model = first.get("model name") or first.get("Hardware") or first.get("CPU part") or platform.processor() or "?"
    isa = {}
    for group, names in INT8_FLAGS.items():
        need_all = group in ("AVX-512",)
        isa[group] = all(n in flags for n in names) if need_all else any(n in flags for n in names)
    relevant = sorted(n for names in INT8_FLAGS.values() for n in names if n in flags)
    present = [g for g, ok in isa.items() if ok]
    summary = ", ".join(present) or "none of " + "/".join(INT8_FLAGS)
    if not isa["VNNI"] and (isa["AVX2"] or isa["AVX-512"]):
        summary += ", no VNNI"
    return {"model": model, "flags": relevant, "isa": isa, "summary": summary}


def has_vnni(text: str | None = None) -> bool:
    return int8_features(text)["isa"]["VNNI"]
