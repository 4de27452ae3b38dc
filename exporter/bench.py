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
from exporter.fsutil import write_json_atomic
from exporter.progress import NULL, Progress
from exporter.runtimes import Runner, load_runner

log = logging.getLogger(__name__)

BENCH_FILE = "bench.json"


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
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")

    def resolved(self) -> "BenchConfig":
        """The same config with threads made explicit: every runtime gets the same number, never its own default
        (LiteRT runs 1 thread when given none, ONNX Runtime one per logical CPU)."""
        if self.threads is not None:
            return self
        from dataclasses import replace

        from exporter.cpuinfo import physical_cores

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


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment(device: str) -> dict:
    from exporter.cpuinfo import int8_features, physical_cores

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


@dataclass
class Target:
    """Something to time: a label, the path, and how to load it."""
    label: str
    kind: str
    path: Path
    options: dict


def targets_for(run: Path, man: dict, kinds: list[str] | None, include_reference: bool = True) -> list[Target]:
    out = []
    ref_kind = man["model"].get("format", "keras")
    ref_path = run / man["model"]["file"]
    if include_reference:
        if ref_kind == "keras":
            out.append(Target("keras (predict)", "keras", ref_path, {"mode": "predict"}))
            out.append(Target("keras (compiled)", "keras", ref_path, {"mode": "compiled"}))
        else:
            out.append(Target(ref_kind, ref_kind, ref_path, {}))
    available = list(man["artifacts"])
    chosen = kinds or available
    missing = [k for k in chosen if k not in available and k not in ("keras", "savedmodel")]
    if missing:
        raise UsageError(f"{run} has no artifact {', '.join(missing)}", hint=f"available: {', '.join(available)}")
    for k in chosen:
        if k in available:
            out.append(Target(k, k, run / man["artifacts"][k]["file"], {}))
    return out


def bench_target(target: Target, images: np.ndarray, cfg: BenchConfig, task=None) -> list[dict]:
    """Cold start, then every batch size, for one target. Raises MissingRuntimeError if it cannot
    run on cfg.device (the caller records that as skipped)."""
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    runner: Runner = load_runner(target.path, kind=target.kind, device=cfg.device, threads=cfg.threads,
                                 **target.options)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    runner.predict(images[:1])
    first_s = time.perf_counter() - t1
    rows = []
    for batch in cfg.batches:
        stats = time_calls(runner.predict, images, batch, cfg)
        rows.append({"target": target.label, "kind": target.kind, "batch": batch, **stats,
                     "cold_start_ms": (load_s + first_s) * 1e3, "load_ms": load_s * 1e3,
                     "first_inference_ms": first_s * 1e3, "engine": runner.info.get("engine"),
                     "provider": runner.info.get("provider"), "device": cfg.device,
                     "threads": runner.info.get("threads"), "precision": runner.info.get("precision")})
        if task is not None:
            task.advance()
    rss = _rss_mb() - rss0
    for r in rows:
        r["rss_increase_mb"] = round(rss, 1)
    runner.close()
    return rows


def bench(*, run: Path, dataset: data_mod.Dataset, kinds: list[str] | None = None, cfg: BenchConfig = BenchConfig(),
          strict: bool = False, include_reference: bool = True, progress: Progress = NULL,
          write: bool = True) -> dict:
    cfg.check()
    cfg = cfg.resolved()
    man = mf.read_manifest(run)
    targets = targets_for(run, man, kinds, include_reference)
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
                skipped.append({"target": t.label, "kind": t.kind, "reason": exc.one_line()})
                task.advance(len(cfg.batches))
    if not rows:
        reasons = "; ".join(f"{s['target']}: {s['reason']}" for s in skipped)
        raise MissingRuntimeError(f"nothing could run on --device {cfg.device}: {reasons}")
    _add_speedups(rows)
    report = {"run": str(run), "created": mf.now_iso(), "config": asdict(cfg), "environment": environment(cfg.device),
              "results": rows, "skipped": skipped}
    if write:
        write_json_atomic(run / BENCH_FILE, report)
    return report


def _add_speedups(rows: list[dict]) -> None:
    """Speed-up of each row over Keras at the same batch size: vs model.predict and vs the compiled call."""
    for ref_label, key in (("keras (predict)", "speedup_vs_keras_predict"), ("keras (compiled)", "speedup_vs_keras_compiled")):
        ref = {r["batch"]: r["p50_ms"] for r in rows if r["target"] == ref_label}
        for r in rows:
            if r["batch"] in ref and r["p50_ms"] > 0:
                r[key] = ref[r["batch"]] / r["p50_ms"]
