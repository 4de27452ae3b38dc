"""The whole job: train -> convert (all kinds) -> validate -> bench (CPU) -> report.

Each stage is skipped when its inputs are unchanged, judged by hash: training by its settings,
conversion by the model's sha256 and the calibration indices (exporter.convert), validation and
benchmark by the sha256 of every artifact plus their settings. --force redoes everything."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exporter import formats
from exporter import manifest as mf
from exporter.bench import BENCH_FILE, BenchConfig, bench
from exporter.convert import DEFAULT_CALIBRATION, convert
from exporter.errors import OutputExistsError
from exporter.progress import NULL, Progress
from exporter.report import write_report
from exporter.train import Recipe, train
from exporter.validate import VALIDATION_FILE, validate

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

    def train_key(self) -> str:
        return _key({"model": self.model, "dataset": self.dataset, "recipe": asdict(self.recipe), "seed": self.seed,
                     "train_limit": self.train_limit, "test_limit": self.test_limit})


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _artifacts_key(man: dict, extra) -> str:
    return _key({"model": man["model"].get("sha256"), "artifacts": {k: v["sha256"] for k, v in man["artifacts"].items()},
                 "extra": extra})


def _stored_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("inputs_key")
    except (OSError, ValueError, AttributeError):
        return None


def default_run(cfg: PipelineConfig) -> Path:
    name = Path(cfg.dataset).stem if Path(cfg.dataset).suffix == ".npz" else Path(cfg.dataset).name
    return mf.artifacts_root() / f"{cfg.model}-{name}-pipeline"


def run_pipeline(cfg: PipelineConfig, *, run: Path | None = None, force: bool = False, data_dir=None,
                 progress: Progress = NULL, on_stage=lambda name, status, seconds: None) -> dict:
    """Run every stage; returns {"run", "stages": {name: {"status", "seconds"}}, "validation", "report"}."""
    run = Path(run or default_run(cfg))
    stages: dict[str, dict] = {}

    def stage(name, fn):
        t0 = time.perf_counter()
        status = fn()
        stages[name] = {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
        on_stage(name, status, stages[name]["seconds"])

    from exporter.rundata import open_data

    ds = open_data(cfg.dataset, data_dir=data_dir, train_limit=cfg.train_limit, test_limit=cfg.test_limit)

    def do_train():
        if (run / mf.MANIFEST).is_file() and not force:
            man = mf.read_manifest(run)
            if man.get("pipeline", {}).get("train_key") == cfg.train_key():
                return "reused"
            raise OutputExistsError(f"{run} holds a model trained with other settings",
                                    hint="pass --force to retrain it, or --run to use another folder")
        train(model_name=cfg.model, dataset=ds, run=run, recipe=cfg.recipe, seed=cfg.seed, force=force,
              progress=progress)
        man = mf.read_manifest(run)
        man["pipeline"] = {"train_key": cfg.train_key()}
        mf.write_manifest(run, man)
        return "trained"

    def do_convert():
        status = convert(run=run, kinds=formats.EXPORTABLE, dataset=ds, calib_samples=cfg.calib_samples,
                         force=force, progress=progress)
        return "reused" if all(v == "up to date" for v in status.values()) else "converted"

    def keyed(file: str, extra, fn):
        def go():
            key = _artifacts_key(mf.read_manifest(run), extra)
            if not force and _stored_key(run / file) == key:
                return "reused"
            result = fn()
            result["inputs_key"] = key
            from exporter.fsutil import write_json_atomic

            write_json_atomic(run / file, result)
            return "done"
        return go

    stage("train", do_train)
    stage("convert", do_convert)
    stage("validate", keyed(VALIDATION_FILE, {"test": cfg.test_limit},
                            lambda: validate(run=run, dataset=ds, progress=progress)))
    stage("bench", keyed(BENCH_FILE, asdict(cfg.bench),
                         lambda: bench(run=run, dataset=ds, cfg=cfg.bench, progress=progress)))
    report = {}
    stage("report", lambda: report.update(write_report(run)) or "written")
    validation = json.loads((run / VALIDATION_FILE).read_text())
    return {"run": str(run), "stages": stages, "validation_passed": validation["passed"], "report": report,
            "test_accuracy": mf.read_manifest(run).get("training", {}).get("test_accuracy")}
