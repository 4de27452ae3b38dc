"""Issue 4: the timing loop's statistics, the bench JSON, GPU requests without a GPU."""

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.bench import BenchConfig, bench, latency_stats, time_calls
from exporter.cli import app
from exporter.cpuinfo import has_vnni, int8_features, physical_cores
from exporter.errors import MissingRuntimeError
from exporter.runtimes.onnx import choose_providers


class FakeClock:
    """A clock that only moves when the fake runner 'works': exact, repeatable timings."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_loop_statistics_on_a_fake_runner_with_known_delays():
    clock = FakeClock()
    delays = [0.001, 0.002, 0.003, 0.004]  # seconds, cycled
    seen = []

    def runner(x):
        seen.append(len(x))
        clock.now += delays[len(seen) % 4]

    cfg = BenchConfig(warmup=3, min_runs=400, min_time=0.0)
    stats = time_calls(runner, np.zeros((100, 2), np.float32), 8, cfg, clock=clock)
    assert stats["runs"] == 400 and len(seen) == 403 and set(seen) == {8}
    assert stats["mean_ms"] == pytest.approx(2.5)
    assert stats["min_ms"] == pytest.approx(1.0) and stats["p99_ms"] == pytest.approx(4.0)
    assert stats["p50_ms"] == pytest.approx(2.5)
    assert stats["throughput_ips"] == pytest.approx(8 / 0.0025)
    assert stats["std_ms"] == pytest.approx(np.std([1, 2, 3, 4]))


def test_loop_honours_min_time_and_max_time():
    clock = FakeClock()

    def runner(x):
        clock.now += 0.125  # exact in binary floating point

    assert time_calls(runner, np.zeros((4, 1)), 1, BenchConfig(warmup=0, min_runs=1, min_time=1.0), clock=clock)["runs"] == 8
    capped = BenchConfig(warmup=0, min_runs=10_000, min_time=0.0, max_time=2.0)
    assert time_calls(runner, np.zeros((4, 1)), 1, capped, clock=clock)["runs"] == 16


def test_latency_stats_percentiles():
    s = latency_stats([i / 1000 for i in range(1, 101)], batch=4)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["throughput_ips"] == pytest.approx(4 / 0.0505)


def test_bench_json_schema(converted_copy, fmnist_small):
    cfg = BenchConfig(batches=(1, 4), warmup=1, min_runs=3, min_time=0.0)
    rep = bench(run=converted_copy, dataset=fmnist_small, cfg=cfg, kinds=["tflite-int8", "onnx-fp32"])
    on_disk = json.loads((converted_copy / "bench.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(rep["results"]))
    assert {r["target"] for r in rep["results"]} >= {"keras (predict)", "keras (compiled)", "tflite-int8", "onnx-fp32"}
    assert {(r["kind"], r["mode"]) for r in rep["results"]} == {("keras", "predict"), ("keras", "compiled"),
                                                                ("tflite-int8", None), ("onnx-fp32", None)}
    keys = {"target", "kind", "mode", "batch", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_ips",
            "cold_start_ms", "load_ms", "first_inference_ms", "engine", "provider", "device",
            "threads", "precision", "speedup_vs_keras_predict", "speedup_vs_keras_compiled"}
    for r in rep["results"]:
        assert keys <= set(r), keys - set(r)
        assert r["runs"] >= 3 and r["p50_ms"] > 0 and r["batch"] in (1, 4)
        assert r["throughput_ips"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"], rel=1e-6)  # one row, one timing
    env = rep["environment"]
    assert env["cores"] >= 1 and env["cpu"] and "onnxruntime" in env["versions"]
    assert rep["skipped"] == []
    # threads are explicit and the same for every runner: the machine's physical cores by default
    runtimes = [r for r in rep["results"] if r["engine"] != "keras"]
    assert {r["threads"] for r in runtimes} == {physical_cores()} == {rep["config"]["threads"]}
    # Keras: TensorFlow takes a thread count only before it starts; the row says what it really uses
    assert all(isinstance(r["threads"], int) and r["threads"] >= 1 for r in rep["results"] if r["engine"] == "keras")
    real = int8_features()
    assert env["physical_cores"] == physical_cores()
    assert env["cpu_int8"] == {"summary": real["summary"], "flags": real["flags"], "isa": real["isa"]}


def _threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.parametrize("kind", ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"])
def test_threads_reach_the_runtime_and_are_read_back(converted_run, fmnist_small, kind):
    """The thread count is read back from the runtime, not echoed: ONNX Runtime's session options, and
    for both the worker threads the runtime really started (a pool of N uses the caller plus N-1)."""
    from exporter import formats
    from exporter.runtimes import load_runner

    path = converted_run / formats.get(kind).filename
    x = fmnist_small.x_test[:4]
    warm = load_runner(path, kind=kind, threads=1)  # the runtime's own one-off threads start here
    warm.predict(x)
    for threads in (1, 5):
        before = _threads_now()
        runner = load_runner(path, kind=kind, threads=threads)
        runner.predict(x)
        started = _threads_now() - before
        if kind.startswith("onnx"):
            assert runner.session.get_session_options().intra_op_num_threads == threads
        runner.close()
        assert started == threads - 1, (kind, threads, started)
    warm.close()


def test_bench_threads_flag_reaches_every_runner(converted_run, fmnist_small, monkeypatch):
    """--threads goes from the bench config to every runner's load (spied), and into each row."""
    from exporter.runtimes.onnx import OnnxRunner
    from exporter.runtimes.tflite import TFLiteRunner

    asked = []
    for cls in (TFLiteRunner, OnnxRunner):
        original = cls.load.__func__
        monkeypatch.setattr(cls, "load", classmethod(
            lambda c, path, *a, _orig=original, **kw: asked.append((c.__name__, kw.get("threads"))) or _orig(c, path, *a, **kw)))
    cfg = BenchConfig(batches=(1,), warmup=0, min_runs=1, min_time=0.0, threads=1)
    rep = bench(run=converted_run, dataset=fmnist_small, cfg=cfg, kinds=["tflite-fp32", "onnx-fp32"],
                include_reference=False, write=False)
    assert {r["threads"] for r in rep["results"]} == {1}  # every row, other runtimes' included
    assert {name for name, _ in asked} == {"TFLiteRunner", "OnnxRunner"} and {t for _, t in asked} == {1}
    assert rep["results"][0]["provider"].startswith("XNNPACK")


def test_bench_environment_reads_the_instruction_sets_from_cpuinfo(monkeypatch):
    """The bench header's int8 instruction sets come from /proc/cpuinfo: a fake one decides them."""
    from exporter import cpuinfo
    from exporter.bench import environment

    monkeypatch.setattr(cpuinfo, "_read_cpuinfo", lambda: FAKE_CPUINFO)
    vnni = environment("cpu")["cpu_int8"]
    assert vnni["isa"]["VNNI"] and vnni["isa"]["AMX"] and "no VNNI" not in vnni["summary"]
    assert "avx512_vnni" in vnni["flags"]
    monkeypatch.setattr(cpuinfo, "_read_cpuinfo", lambda: FAKE_CPUINFO.replace(" avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8", ""))
    avx2 = environment("cpu")["cpu_int8"]
    assert avx2["summary"] == "AVX2, no VNNI" and not avx2["isa"]["VNNI"] and avx2["flags"] == ["avx2"]


def _fake_cpuinfo(cpus: list[tuple[int, int]]) -> str:
    """A /proc/cpuinfo with one entry per (physical id, core id), every CPU with the same flags."""
    flags = "fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8"
    return "\n".join(f"processor\t: {i}\nmodel name\t: Fake Xeon\nphysical id\t: {pkg}\ncore id\t\t: {core}\n"
                     f"flags\t\t: {flags}\n" for i, (pkg, core) in enumerate(cpus))


# cpus 0 and 1 are hyper-threads of package 0's core 0; cpu 3 is package 1's core 1
FAKE_CPUINFO = _fake_cpuinfo([(0, 0), (0, 0), (0, 1), (1, 1)])


def test_cpu_flags_and_physical_cores_from_a_fake_cpuinfo():
    f = int8_features(FAKE_CPUINFO)
    assert f["model"] == "Fake Xeon"
    assert f["isa"] == {"AVX2": True, "AVX-512": True, "VNNI": True, "AMX": True, "NEON": False, "dotprod": False,
                        "i8mm": False}
    assert f["flags"] == ["amx_int8", "amx_tile", "avx2", "avx512_vnni", "avx512bw", "avx512f", "avx512vl"]
    assert "no VNNI" not in f["summary"]
    # hyper-threads 0/1 share core (0, 0); cpu 3 is another package's core 1
    assert physical_cores(FAKE_CPUINFO, allowed={0, 1, 2, 3}) == 3
    assert physical_cores(FAKE_CPUINFO, allowed={0, 1}) == 1
    assert physical_cores("", allowed={0, 5}) == 2  # no cpuinfo: the CPUs we may use
    avx2_only = FAKE_CPUINFO.replace(" avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8", "")
    g = int8_features(avx2_only)
    assert g["isa"]["AVX2"] and not g["isa"]["VNNI"] and not g["isa"]["AVX-512"] and g["summary"] == "AVX2, no VNNI"
    assert not has_vnni(avx2_only) and has_vnni(FAKE_CPUINFO)
    partial = FAKE_CPUINFO.replace(" avx512bw", "")  # AVX-512 needs f, bw and vl
    assert not int8_features(partial)["isa"]["AVX-512"]
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0c\n"
    a = int8_features(arm)
    assert a["isa"]["NEON"] and a["isa"]["dotprod"] and a["isa"]["i8mm"] and not a["isa"]["AVX2"]


def test_gpu_without_a_gpu_is_a_clear_error(converted_run):
    r = CliRunner().invoke(app, ["bench", "--run", str(converted_run), "--device", "gpu", "--batch", "1",
                                 "--min-runs", "1", "--min-time", "0"])
    assert r.exit_code == 5, r.output
    assert "nothing could run on --device gpu" in r.output and "onnxruntime-gpu" in r.output
    assert "Traceback" not in r.output
    strict = CliRunner().invoke(app, ["bench", "--run", str(converted_run), "--device", "gpu", "--strict",
                                      "--artifacts", "onnx-fp32", "--no-reference"])
    assert strict.exit_code == 5 and "onnxruntime-gpu" in strict.output


def test_onnx_gpu_providers_are_explicit():
    assert choose_providers("gpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CUDAExecutionProvider"]
    assert choose_providers("gpu", ["TensorrtExecutionProvider", "CUDAExecutionProvider"], "TensorrtExecutionProvider") \
        == ["TensorrtExecutionProvider"]
    with pytest.raises(MissingRuntimeError) as info:
        choose_providers("gpu", ["CPUExecutionProvider"])
    assert "pip install onnxruntime-gpu" in info.value.one_line()


# bench on an edge box without TensorFlow: tests/test_export.py::test_validate_and_bench_run_on_an_edge_box_without_tensorflow
# (validate, bench --json and bench's table in one child process)


def test_report_header_names_int8_instruction_sets_and_threads():
    from exporter.report import render_markdown

    table = {"model": "m", "dataset": "d", "run": "r", "test_samples": 10, "rows": [], "skipped": [],
             "environment": {"cpu": "Fake", "cores": 4, "physical_cores": 2, "device": "cpu",
                             "cpu_int8": {"summary": "AVX2, no VNNI"}},
             "bench_rows": [{"target": "tflite-fp32", "batch": 1, "threads": 2},
                            {"target": "onnx-fp32", "batch": 1, "threads": 2}]}
    md = render_markdown(table)
    assert "CPU instruction sets for int8: **AVX2, no VNNI**" in md
    assert "Threads per runtime: 2 (physical cores: 2)" in md
