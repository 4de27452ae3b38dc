"""The whole job: train -> convert (all kinds) -> validate -> bench (CPU) -> report.

A plain sequence of exporter.api calls, the data opened once and handed to each. Each stage decides for
itself whether its output is up to date, by the key of its declared inputs (exporter.manifest.inputs_key:
model sha256, dataset identity, calibration, flags, versions), and answers "reused" or what it did.
--force redoes everything."""

from __future__ import annotations

import time
from pathlib import Path

from exporter import api
from exporter.api import PipelineOptions
from exporter.data.choose import open_data
from exporter.progress import NULL, Progress
from exporter.run import Run, default_run_path


def default_run(options: PipelineOptions) -> Path:
    return default_run_path(options.model, options.data, tag="pipeline")


def run_pipeline(options: PipelineOptions | None = None, *, run: Path | None = None, force: bool = False,
                 progress: Progress = NULL, on_stage=lambda name, status, seconds: None) -> dict:
    """Run every stage; returns {"run", "stages": {name: {"status", "seconds"}}, "validation_passed", "report",
    "test_accuracy"}."""
    o = options or PipelineOptions()
    run = Path(run or default_run(o))
    ds = open_data(o.data, data_dir=o.data_dir, train_limit=o.train_limit, test_limit=o.test_limit)
    stages: dict[str, dict] = {}

    def stage(name, fn, status):
        t0 = time.perf_counter()
        result = fn()
        stages[name] = {"status": status(result), "seconds": round(time.perf_counter() - t0, 1)}
        on_stage(name, stages[name]["status"], stages[name]["seconds"])
        return result

    def reused_or(done):
        return lambda result: "reused" if result.reused else done

    stage("train", lambda: api.train(o.train_options(), run=run, force=force, reuse=True, dataset=ds,
                                     progress=progress), reused_or("trained"))
    stage("convert", lambda: api.convert(run=run, options=o.convert, force=force, dataset=ds, progress=progress),
          lambda c: "reused" if c.up_to_date else "converted")
    validation = stage("validate", lambda: api.validate(run, limit=o.test_limit, data_dir=o.data_dir,
                                                        reuse=not force, dataset=ds, progress=progress),
                       reused_or("done"))
    stage("bench", lambda: api.bench(run, options=o.bench, reuse=not force, dataset=ds, progress=progress),
          reused_or("done"))
    report = stage("report", lambda: api.report(run), lambda _: "written")
    return {"run": str(run), "stages": stages, "validation_passed": validation.passed, "report": report,
            "test_accuracy": Run(run).training.get("test_accuracy")}
