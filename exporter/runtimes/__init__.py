"""Runners: one interface over every engine. `load_runner` picks the class from the formats table."""

from __future__ import annotations

from pathlib import Path

from exporter import formats
from exporter.errors import UsageError
from exporter.runtimes.base import Runner

DEVICES = ("cpu", "gpu")


def load_runner(path: str | Path, *, kind: str | None = None, runtime: str | None = None, device: str = "cpu",
                threads: int | None = None, **options) -> Runner:
    """Load any artifact. `kind` (a formats-table name) if known, else the family from the suffix;
    on `runtime` (a formats-table runtime that reads the family), else on the family's own."""
    if device not in DEVICES:
        raise UsageError(f"unknown --device '{device}'", hint="use cpu or gpu")
    path = Path(path)
    row = formats.get(kind) if kind else formats.kind_for_path(path)
    engine = formats.runtime(runtime) if runtime else formats.own_runtime(row.family)
    if row.family not in engine.reads:
        raise UsageError(f"the runtime {engine.name} does not read {row.family} files ({path.name})",
                         hint=f"it reads: {', '.join(engine.reads)}")
    runner = engine.load_runner_class().load(path, device=device, threads=threads, **options)
    runner.info["kind"] = kind or row.family
    runner.info["runtime"] = engine.name
    return runner


__all__ = ["Runner", "load_runner", "DEVICES"]
