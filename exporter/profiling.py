"""Profiling (named profiling.py: `profile` is a standard-library module): where the time of one call goes, op by op, for any target (kind, runtime), from what its
Runner can tell (`Runner.profile`: ONNX Runtime's profiler, OpenVINO's per-layer counters, LiteRT's
XNNPACK-vs-built-in split). This stage never asks which format it profiles: it arranges what the runner
returns (shares of the total, the top ops, the Q/DQ share) and writes profile.json."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from exporter import formats
from exporter import manifest as mf
from exporter.errors import MissingRuntimeError, UsageError
from exporter.fsutil import write_json_atomic
from exporter.run import Run
from exporter.runtimes import load_runner

log = logging.getLogger(__name__)

PROFILE_FILE = "profile.json"
# (de)quantisation ops as each runtime names them: their share is what int8 pays for crossing domains
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "FakeQuantize", "QUANTIZE",
                     "DEQUANTIZE"})


def layer_from_name(name: str | None) -> str | None:
    """The Keras layer a node or tensor name tells, where it tells: 'model/res1_conv1/Conv2D' ->
    'res1_conv1'. Names made by position (the project's ONNX files: 'conv_12', 't12_0') tell none."""
    if not name or "/" not in name:
        return None
    parts = [p for p in re.split(r"[/;]", name.split(":")[0]) if p]
    return parts[1] if len(parts) > 2 else parts[-1] if parts else None


def summarize(raw: dict) -> dict:
    """A runner's raw profile -> ops sorted by time with shares of the timed total, and the Q/DQ share."""
    if not raw.get("available"):
        return {"available": False, "reason": raw.get("reason", "not available")}
    ops = [dict(o) for o in raw["ops"]]
    for o in ops:
        o["layer"] = o.get("layer") or layer_from_name(o.pop("layer_hint", None) or o.get("node"))
    out = {k: raw[k] for k in ("timed", "runs", "shows", "cannot_show") if k in raw}
    if raw.get("timed"):
        total = sum(o["us"] for o in ops) or 1.0
        for o in ops:
            o["share"] = o["us"] / total
            o["ms_per_call"] = o["us"] / max(o["calls"], 1) / 1e3
        ops.sort(key=lambda o: -o["us"])
        out["total_ms_per_call"] = total / max(raw.get("runs", 1), 1) / 1e3
        out["qdq_share"] = sum(o["share"] for o in ops if o["op_type"] in QDQ_OPS)
        by_type: dict[str, float] = {}
        for o in ops:
            by_type[o["op_type"]] = by_type.get(o["op_type"], 0.0) + o["share"]
        out["op_types"] = dict(sorted(by_type.items(), key=lambda kv: -kv[1]))
    else:
        out["call_ms"] = raw.get("call_ms")
        counts: dict[str, int] = {}
        for o in ops:
            where = o.get("runs_in", "?")
            counts[where] = counts.get(where, 0) + 1
        out["runs_in"] = counts
    out["available"] = True
    out["ops"] = ops
    return out


def profile(*, run: Run | Path, images: np.ndarray, kinds: list[str] | None = None, runtimes: list[str] | None = None,
            runs: int = 20, batch: int = 1, threads: int | None = None, write: bool = True) -> dict:
    """Profile every target of the run (each kind on each runtime that reads it, or those named) on
    `batch` real images for `runs` calls; writes profile.json (unless write=False)."""
    if runs < 1 or batch < 1:
        raise UsageError(f"--runs and --batch must be positive, got {runs} and {batch}")
    run = Run.of(run)
    available = list(run.artifacts)
    for kind in kinds or ():
        formats.get(kind)  # an unknown kind: UsageError naming the choices
        if kind not in available:
            raise UsageError(f"{run} has no artifact {kind}", hint=f"available: {', '.join(available)}")
    chosen = list(kinds) if kinds else available
    x = np.ascontiguousarray(images[:batch] if len(images) >= batch else np.resize(images, (batch, *images.shape[1:])),
                             dtype=np.float32)
    results = []
    for kind, runtime in formats.targets(chosen, runtimes, explicit_kinds=bool(kinds)):
        label = formats.target_label(kind, runtime)
        try:
            runner = load_runner(run.artifact_path(kind), kind=kind, runtime=runtime, threads=threads)
        except MissingRuntimeError as exc:
            results.append({"target": label, "kind": kind, "runtime": runtime, "available": False,
                            "reason": exc.one_line()})
            continue
        try:
            summary = summarize(runner.profile(x, runs))
        finally:
            runner.close()
        results.append({"target": label, "kind": kind, "runtime": runtime, "engine": runner.info.get("engine"),
                        "precision": runner.info.get("precision"), "threads": threads, **summary})
        log.info("profiled %s", label)
    doc = {"run": str(run), "created": mf.now_iso(), "batch": batch, "runs": runs, "threads": threads,
           "targets": results}
    if write:
        write_json_atomic(run / PROFILE_FILE, doc)
    return doc
