"""The whole job: train -> convert (all kinds) -> validate -> bench (CPU) -> report.

A plain sequence of stage calls. Each stage decides for itself whether its output is up to date, by
the key of its declared inputs (exporter.manifest.inputs_key: model sha256, dataset identity,
calibration, flags, versions), and answers "reused" or what it did. --force redoes everything."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from exporter import formats
from exporter.bench import BenchConfig, bench
from exporter.convert import DEFAULT_CALIBRATION, convert
from exporter.progress import NULL, Progress
from exporter.report import write_report
from exporter.run import Run, default_run_path
from exporter.train import Recipe, train
from exporter.validate import validate
from exporter.data.choose import open_data

PIPELINE_BENCH = BenchConfig(batches=(1, 64), warmup=3, min_runs=10, min_time=0.5)


@dataclass
class PipelineConfig:
    model: str = "resmini"
    dataset: str = "fashion_mnist"
    recipe: Recipe = None
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    calib_samples: int = DEFAULT_CALIBRATION
    bench: BenchConfig = field(default_factory=lambda: PIPELINE_BENCH)


def default_run(cfg: PipelineConfig) -> Path:
    return default_run_path(cfg.model, cfg.dataset, tag="pipeline")


def run_pipeline(cfg: PipelineConfig, *, run: Path | None = None, force: bool = False, data_dir=None,
                 progress: Progress = NULL, on_stage=lambda name, status, seconds: None) -> dict:
    """Run every stage; returns {"run", "stages": {name: {"status", "seconds"}}, "validation_passed", "report"}."""
    run = Path(run or default_run(cfg))
    stages: dict[str, dict] = {}
    results: dict[str, dict] = {}

    def stage(name, fn):
        t0 = time.perf_counter()
        status = fn()
        stages[name] = {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
        on_stage(name, status, stages[name]["seconds"])

    ds = open_data(cfg.dataset, data_dir=data_dir, train_limit=cfg.train_limit, test_limit=cfg.test_limit)

    def do_train():
        res = train(model_name=cfg.model, dataset=ds, run=run, recipe=cfg.recipe, seed=cfg.seed, force=force,
                    reuse=True, progress=progress)
        return "reused" if res.reused else "trained"

    def do_convert():
        status = convert(run=run, kinds=formats.EXPORTABLE, dataset=ds, calib_samples=cfg.calib_samples,
                         force=force, progress=progress)
        return "reused" if all(v == "up to date" for v in status.values()) else "converted"

    def reused_or_done(name, fn):
        def go():
            results[name] = fn()
            return "reused" if results[name].get("reused") else "done"
        return go

    stage("train", do_train)
    stage("convert", do_convert)
    stage("validate", reused_or_done("validate", lambda: validate(run=run, dataset=ds, progress=progress,
                                                                  reuse=not force)))
    stage("bench", reused_or_done("bench", lambda: bench(run=run, dataset=ds, cfg=cfg.bench, progress=progress,
                                                         reuse=not force)))
    report = {}
    stage("report", lambda: report.update(write_report(run)) or "written")
    return {"run": str(run), "stages": stages, "validation_passed": results["validate"]["passed"], "report": report,
            "test_accuracy": Run(run).training.get("test_accuracy")}
