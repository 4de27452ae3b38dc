"""Issue 5: report from fixture results, the pipeline end to end, the depth study, ResNet-18 on
CIFAR-10 files written in the real format."""

import json

from typer.testing import CliRunner

from exporter import formats
from exporter import manifest as mf
from exporter.cli import app
from exporter.report import write_report
from tests.conftest import write_cifar_folder


def _fixture_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"PK\x03\x04" + b"\0" * 1000)
    arts = {k.name: {"file": k.filename, "bytes": 1000 + i * 100, "sha256": "0" * 64}
            for i, k in enumerate(formats.EXPORTABLE)}
    mf.write_manifest(run, {"created": mf.now_iso(), "model": {"name": "resmini", "file": "model.keras"},
                            "dataset": {"name": "fashion_mnist"}, "artifacts": arts,
                            "training": {"test_accuracy": 0.9}})
    val = {"passed": False, "dataset": {"samples": 10000}, "reference": {"accuracy": 0.9},
           "artifacts": [{"kind": k, "accuracy": 0.9 - i / 1000, "change_points": -i / 10, "agreement": 100 - i / 10,
                          "passed": k != "onnx-int8"} for i, k in enumerate(arts)]}
    (run / "validation.json").write_text(json.dumps(val))
    rows = [{"target": f"{k} ({m})" if m else k, "kind": k, "mode": m, "batch": b, "p50_ms": p * b,
             "speedup_vs_keras_predict": 50 / p}
            for k, m, p in [("keras", "predict", 50.0), ("keras", "compiled", 1.0)]
            + [(k, None, 0.1 + i / 100) for i, k in enumerate(arts)]
            for b in (1, 64)]
    (run / "bench.json").write_text(json.dumps({"results": rows, "skipped": [], "environment": {"cpu": "test", "cores": 2, "device": "cpu"}}))
    return run, arts


def test_report_renders_every_artifact_from_fixture_results(tmp_path):
    run, arts = _fixture_run(tmp_path)
    table = write_report(run)
    md = (run / "report.md").read_text()
    for kind in arts:
        assert f"| {kind} |" in md
    assert "| onnx-int8 |" in md and "**FAIL**" in md and "keras (reference, compiled call)" in md
    assert "500.0x" in md  # tflite-fp32: 50 ms / 0.1 ms
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["kind"] for r in table["rows"]][1:] == list(arts)
    r = CliRunner().invoke(app, ["report", "--run", str(run), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["rows"][0]["reference"] is True


def test_report_without_bench_or_validation_still_renders(tmp_path):
    run, arts = _fixture_run(tmp_path)
    (run / "bench.json").unlink()
    (run / "validation.json").unlink()
    table = write_report(run)
    assert table["plot"] is None and "| tflite-int8 |" in (run / "report.md").read_text()


def test_pipeline_end_to_end_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv(mf.ARTIFACTS_ENV, str(tmp_path / "artifacts"))
    args = ["pipeline", "--epochs", "2", "--train-limit", "4000", "--test-limit", "500", "--json"]
    r = CliRunner().invoke(app, args)
    first = json.loads(r.stdout)
    run = tmp_path / "artifacts" / "resmini-fashion_mnist-pipeline"
    # A model trained in the test is not the same on every CPU, and whether its quantised kinds pass on
    # 500 images depends on a few near-ties; what holds everywhere: the exit code and the summary say
    # what validation.json says, and the float32 kinds pass (their error is orders below the gate).
    val = json.loads((run / "validation.json").read_text())
    assert first["run"] == str(run) and first["validation_passed"] == val["passed"]
    assert r.exit_code == (0 if val["passed"] else 4), r.output
    assert {a["kind"] for a in val["artifacts"] if a["passed"]} >= {"tflite-fp32", "onnx-fp32"}
    assert [s["status"] for s in first["stages"].values()] == ["trained", "converted", "done", "done", "written"]
    for f in ("model.keras", "model_int8.tflite", "model_int8.onnx", "validation.json", "bench.json", "report.md", "report.png"):
        assert (run / f).is_file(), f
    again = json.loads(CliRunner().invoke(app, args).stdout)
    assert [s["status"] for s in again["stages"].values()] == ["reused"] * 4 + ["written"]
    changed = CliRunner().invoke(app, ["pipeline", "--epochs", "3", "--train-limit", "4000", "--test-limit", "500"])
    assert changed.exit_code == 2 and "--force" in changed.output


def test_depth_experiment_tiny(tmp_path):
    out = tmp_path / "depth"
    r = CliRunner().invoke(app, ["experiment", "depth", "--depths", "12", "--epochs", "1", "--train-limit", "300",
                                 "--test-limit", "100", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "depth.json").read_text())
    assert [row["model"] for row in doc["rows"]] == ["plain12", "residual12"]
    assert doc["rows"][0]["seed_reported"] == 88.09 and doc["recipe"]["batch_size"] == 150
    assert "89.43%" in (out / "depth.md").read_text() and (out / "depth.png").stat().st_size > 1000
    assert not any(row["reused"] for row in doc["rows"])
    _figures_are_the_runs_own(out, doc)

    # The same settings again: nothing is retrained, the runs and their accuracies are kept.
    model_bytes = (out / "runs" / "residual12" / "model.keras").read_bytes()
    r = CliRunner().invoke(app, ["experiment", "depth", "--depths", "12", "--epochs", "1", "--train-limit", "300",
                                 "--test-limit", "100", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    again = json.loads((out / "depth.json").read_text())
    assert all(row["reused"] for row in again["rows"])
    assert [row["test_accuracy"] for row in again["rows"]] == [row["test_accuracy"] for row in doc["rows"]]
    assert (out / "runs" / "residual12" / "model.keras").read_bytes() == model_bytes
    r = CliRunner().invoke(app, ["experiment", "depth", "--depths", "12", "--epochs", "1", "--train-limit", "300",
                                 "--test-limit", "100", "--out", str(out)])
    assert r.exit_code == 0 and (out / "depth.md").read_text().strip() in r.stdout  # printed verbatim
    assert "plain12:" in r.stderr and "reused" in r.stderr

    # Other settings: the existing runs are not replaced without --force.
    r = CliRunner().invoke(app, ["experiment", "depth", "--depths", "12", "--epochs", "2", "--train-limit", "300",
                                 "--test-limit", "100", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "trained with other settings" in r.output and "--force" in r.output
    assert (out / "runs" / "residual12" / "model.keras").read_bytes() == model_bytes


def _figures_are_the_runs_own(out, doc):
    """The study's figures recomputed from each run's own files, not from the code that wrote them:
    its model scored again on the same test images (percent, as the table says), its manifest's record
    (a fraction), its history (one entry per epoch); and depth.md's cells in the same unit."""
    import re

    import keras

    from exporter import data

    ds = data.load_dataset("fashion_mnist", train_limit=300, test_limit=100)
    cells = {}
    for line in (out / "depth.md").read_text().splitlines():
        m = re.match(r"\| (\d+) \| ([\d.]+)% \| [\d.]+% \| ([\d.]+)% \|", line)
        if m:
            cells[("plain", int(m[1]))], cells[("residual", int(m[1]))] = float(m[2]), float(m[3])
    for row in doc["rows"]:
        run = out / "runs" / row["model"]
        model = keras.saving.load_model(run / "model.keras")
        acc = 100 * float((model.predict(ds.x_test, verbose=0).argmax(1) == ds.y_test).mean())
        one_image = 100 / len(ds.y_test)
        assert abs(row["test_accuracy"] - acc) <= one_image + 1e-9, (row["model"], row["test_accuracy"], acc)
        assert abs(cells[(row["kind"], row["depth"])] - acc) <= one_image + 0.01, (row["model"], cells, acc)
        recorded = mf.read_manifest(run)["training"]["test_accuracy"]
        assert 0 <= recorded <= 1 and abs(100 * recorded - acc) <= one_image + 1e-9
        history = json.loads((run / "history.json").read_text())
        assert [h["epoch"] for h in history] == list(range(1, row["epochs"] + 1))


def test_resnet18_trains_on_cifar10_files_in_the_real_format(tmp_path):
    folder, _ = write_cifar_folder(tmp_path / "cifar-10-batches-py", per_batch=20)
    r = CliRunner().invoke(app, ["train", "--model", "resnet18", "--data-dir", str(folder), "--epochs", "1",
                                 "--batch-size", "50", "--run", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    man = mf.read_manifest(tmp_path / "run")
    assert man["dataset"]["name"] == "cifar10" and man["model"]["input_shape"] == [32, 32, 3]
    assert man["dataset"]["train"] == 100 and man["model"]["params"] == 11184778


# The depth study under Keras-on-JAX without TensorFlow (the GPU machine) runs in the one JAX process of
# tests/test_models.py::test_models_build_and_train_under_jax_without_tensorflow.
