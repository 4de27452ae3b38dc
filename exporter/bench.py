"""Benchmarking: one timing loop over any Runner (the Keras reference included), never asking
which format it times. Inputs are real test images, cycled so no call sees the same batch twice
in a row."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from exporter import data as data_mod
from exporter import formats
from exporter import manifest as mf
from exporter.errors import MissingRuntimeError, UsageError
from exporter.fsutil import sha256_path, write_json_atomic
from exporter.progress import NULL, Progress
from exporter.run import BENCH_FILE, Run
from exporter.runtimes import DEVICES, Runner, load_runner
from exporter.cpuinfo import int8_features, physical_cores

log = logging.getLogger(__name__)




@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1, 8, 64)
    warmup: int = 5
    min_runs: int = 20
    min_time: float = 1.0      # seconds of timed calls per (target, batch), at least
    max_time: float = 30.0     # stop after this even if min_runs is not reached
    threads: int | None = None  # None: the machine's physical cores (exporter.cpuinfo), the same for every runner
    device: str = "cpu"

    def check(self) -> None:
        if not self.batches or any(b <= 0 for b in self.batches):
            raise UsageError(f"--batch sizes must be positive, got {list(self.batches)}")
        if self.warmup < 0 or self.min_runs < 1 or self.min_time < 0:
            raise UsageError("--warmup must be >= 0, --min-runs >= 1, --min-time >= 0")

        if self.device not in DEVICES:
            raise UsageError(f"unknown --device '{self.device}'", hint=f"use {' or '.join(DEVICES)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")

    def resolved(self) -> "BenchConfig":
        """The same config with threads made explicit: every runtime gets the same number, never its own default
        (LiteRT runs 1 thread when given none, ONNX Runtime one per logical CPU)."""
        if self.threads is not None:
            return self
        from dataclasses import replace

        return replace(self, threads=physical_cores())


def latency_stats(seconds: list[float], batch: int) -> dict:
    """Percentiles and throughput from per-call latencies (seconds)."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    mean = float(a.mean())
    return {"runs": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": mean, "std_ms": float(a.std()),
            "min_ms": float(a.min()), "throughput_ips": float(batch / (mean / 1e3)) if mean > 0 else float("inf")}


def time_calls(call: Callable[[np.ndarray], object], images: np.ndarray, batch: int, cfg: BenchConfig,
               clock: Callable[[], float] = time.perf_counter) -> dict:
    """THE timing loop: warm up, then time single calls until both min_runs and min_time are met."""
    n = len(images)
    if n < batch:
        images = np.concatenate([images] * (-(-batch // n)))
        n = len(images)
    starts = list(range(0, n - batch + 1, batch)) or [0]
    for i in range(cfg.warmup):
        call(images[starts[i % len(starts)]: starts[i % len(starts)] + batch])
    latencies: list[float] = []
    begin = clock()
    while True:
        s = starts[len(latencies) % len(starts)]
        x = images[s: s + batch]
        t0 = clock()
        call(x)
        latencies.append(clock() - t0)
        spent = clock() - begin
        if (len(latencies) >= cfg.min_runs and spent >= cfg.min_time) or spent >= cfg.max_time:
            break
    return latency_stats(latencies, batch)


def environment(device: str) -> dict:
    features = int8_features()
    cpu = features["model"]
    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            gpu = None
    return {"cpu": cpu, "cores": os.cpu_count(), "physical_cores": physical_cores(),
            "cpu_int8": {"summary": features["summary"], "flags": features["flags"], "isa": features["isa"]},
            "gpu": gpu, "device": device, "python": platform.python_version(),
            "platform": platform.platform(), "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
            "versions": mf.library_versions()}


KERAS_MODES = ("predict", "compiled")  # model.predict, and the backend's compiled predict_on_batch


@dataclass(frozen=True)
class Target:
    """Something to time: an artifact kind from the formats table, the runtime it runs on (None: the
    family's own), and for the Keras reference the way it is called (`mode`: predict or compiled).
    Results are labelled by target; speed-ups are keyed by (kind, mode)."""
    kind: str
    path: Path
    mode: str | None = None
    runtime: str | None = None

    @property
    def label(self) -> str:
        if self.mode:
            return f"{self.kind} ({self.mode})"
        return formats.target_label(self.kind, self.runtime) if self.runtime else self.kind

    @property
    def options(self) -> dict:
        return {"mode": self.mode} if self.mode else {}


def targets_for(run: Run, kinds: list[str] | None, include_reference: bool = True,
                runtimes: list[str] | None = None) -> list[Target]:
    out = []
    ref_kind, ref_path = run.model_format, run.model_path
    if include_reference:
        if ref_kind == "keras":
            out.extend(Target("keras", ref_path, mode) for mode in KERAS_MODES)
        else:
            out.append(Target(ref_kind, ref_path))
    available = list(run.artifacts)
    chosen = kinds or available
    missing = [k for k in chosen if k not in available and k not in ("keras", "savedmodel")]
    if missing:
        raise UsageError(f"{run} has no artifact {', '.join(missing)}", hint=f"available: {', '.join(available)}")
    chosen = [k for k in chosen if k in available]
    out.extend(Target(k, run.artifact_path(k), runtime=rt) for k, rt in formats.targets(chosen, runtimes,
                                                                                       explicit_kinds=bool(kinds)))
    return out


def bench_target(target: Target, images: np.ndarray, cfg: BenchConfig, task=None) -> list[dict]:
    """Cold start, then every batch size, for one target. Raises MissingRuntimeError if it cannot
    run on cfg.device (the caller records that as skipped)."""
    t0 = time.perf_counter()
    runner: Runner = load_runner(target.path, kind=target.kind, runtime=target.runtime, device=cfg.device,
                                 threads=cfg.threads, **target.options)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    runner.predict(images[:1])
    first_s = time.perf_counter() - t1
    rows = []
    for batch in cfg.batches:
        stats = time_calls(runner.predict, images, batch, cfg)
        rows.append({"target": target.label, "kind": target.kind, "mode": target.mode,
                     "runtime": runner.info.get("runtime"), "batch": batch, **stats,
                     "cold_start_ms": (load_s + first_s) * 1e3, "load_ms": load_s * 1e3,
                     "first_inference_ms": first_s * 1e3, "engine": runner.info.get("engine"),
                     "provider": runner.info.get("provider"), "device": cfg.device,
                     "threads": runner.info.get("threads"), "precision": runner.info.get("precision"),
                     **({"precision_hint": runner.info["precision_hint"]} if "precision_hint" in runner.info else {})})
        if task is not None:
            task.advance()
    runner.close()
    return rows


def bench_inputs(targets: list[Target], cfg: BenchConfig, env: dict) -> dict:
    """What a benchmark depends on: the stage key's inputs (every target by sha256, the settings,
    the machine and the runtimes' versions)."""
    return {"targets": {t.label: sha256_path(t.path) if t.path.exists() else None for t in targets},
            "config": asdict(cfg), "machine": {k: env.get(k) for k in ("cpu", "cores", "gpu", "device", "versions")}}


def bench(*, run: Run | Path, dataset: data_mod.Dataset, kinds: list[str] | None = None, cfg: BenchConfig = BenchConfig(),
          strict: bool = False, include_reference: bool = True, progress: Progress = NULL,
          write: bool = True, reuse: bool = False, runtimes: list[str] | None = None) -> dict:
    """Time every target of the run: each kind on every runtime that reads it (or those of `runtimes`). Writes bench.json (unless write=False). With reuse=True, a
    bench.json made from the same inputs (its inputs_key) is returned as it is, marked "reused"."""
    cfg.check()
    cfg = cfg.resolved()
    run = Run.of(run)
    targets = targets_for(run, kinds, include_reference, runtimes)
    env = environment(cfg.device)
    inputs = bench_inputs(targets, cfg, env)
    key = mf.inputs_key(inputs)
    if reuse:
        stored = mf.read_json_if(run / BENCH_FILE)
        if stored is not None and stored.get("inputs_key") == key:
            return {**stored, "reused": True}
    images = np.ascontiguousarray(dataset.x_test[: max(512, max(cfg.batches) * 4)])
    rows, skipped = [], []
    with progress.task(f"benchmarking on {cfg.device}", total=len(targets) * len(cfg.batches)) as task:
        for t in targets:
            task.describe(t.label)
            try:
                rows.extend(bench_target(t, images, cfg, task))
            except MissingRuntimeError as exc:
                if strict:
                    raise
                skipped.append({"target": t.label, "kind": t.kind, "mode": t.mode, "runtime": t.runtime,
                                "reason": exc.one_line()})
                task.advance(len(cfg.batches))
    if not rows:
        reasons = "; ".join(f"{s['target']}: {s['reason']}" for s in skipped)
        raise MissingRuntimeError(f"nothing could run on --device {cfg.device}: {reasons}")
    _add_speedups(rows)
    report = {"run": str(run), "created": mf.now_iso(), "inputs_key": key, "config": asdict(cfg), "environment": env,
              "results": rows, "skipped": skipped}
    if write:
        write_json_atomic(run / BENCH_FILE, report)
    return report


def _add_speedups(rows: list[dict]) -> None:
    """Speed-up of each row over Keras at the same batch size: vs model.predict and vs the compiled call."""
    for mode in KERAS_MODES:
        ref = {r["batch"]: r["p50_ms"] for r in rows if (r["kind"], r.get("mode")) == ("keras", mode)}
        for r in rows:
            if r["batch"] in ref and r["p50_ms"] > 0:
                r[f"speedup_vs_keras_{mode}"] = ref[r["batch"]] / r["p50_ms"]
