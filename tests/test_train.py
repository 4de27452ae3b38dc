import json

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import manifest as mf
from exporter.cli import app
from exporter.errors import OutputExistsError
from exporter.train import RECIPES, train


def test_small_model_learns_real_fashion_mnist(trained_run, fmnist_small):
    # 3 epochs on 10000 real images: chance is 10%.
    assert trained_run.test_accuracy > 0.75
    man = mf.read_manifest(trained_run.run)
    assert man["training"]["test_accuracy"] == pytest.approx(trained_run.test_accuracy)
    assert man["model"]["sha256"] and man["dataset"]["name"] == "fashion_mnist"
    hist = json.loads((trained_run.run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[-1]["loss"] < hist[0]["loss"]


def test_existing_run_is_not_overwritten(trained_run, fmnist_small):
    before = (trained_run.run / "model.keras").read_bytes()
    with pytest.raises(OutputExistsError):
        train(model_name="resmini", dataset=fmnist_small, run=trained_run.run, recipe=RECIPES["fast"])
    assert (trained_run.run / "model.keras").read_bytes() == before


def test_cli_train_writes_a_reloadable_run(tmp_path, fmnist_small):
    run = tmp_path / "cli-run"
    result = CliRunner().invoke(app, ["train", "--model", "resmini", "--epochs", "1", "--train-limit", "1000",
                                      "--test-limit", "500", "--run", str(run), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    man = mf.read_manifest(run)
    assert set(man["artifacts"]) == set() and man["training"]["recipe"]["epochs"] == 1
    # The reloaded model reproduces the accuracy recorded at training time, on the same test subset.
    from exporter import data

    ds = data.load_dataset("fashion_mnist", test_limit=500)
    model = keras.saving.load_model(run / "model.keras")
    probs = model.predict(ds.x_test, verbose=0)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert float((probs.argmax(1) == ds.y_test).mean()) == pytest.approx(summary["test_accuracy"], abs=1e-6)
    # A second train into the same folder is refused with the usage exit code.
    again = CliRunner().invoke(app, ["train", "--epochs", "1", "--train-limit", "500", "--run", str(run)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_reloaded_predictions_equal_the_original(tmp_path, fmnist_small):
    from dataclasses import replace

    res = train(model_name="resmini", dataset=fmnist_small, run=tmp_path / "r",
                recipe=replace(RECIPES["fast"], epochs=1), seed=3)
    reloaded = keras.saving.load_model(res.run / "model.keras")
    x = fmnist_small.x_test[:64]
    assert np.array_equal(res.model.predict(x, verbose=0), reloaded.predict(x, verbose=0))


def test_newest_run_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv(mf.ARTIFACTS_ENV, str(tmp_path))
    for name, created in (("b", "2026-01-02T00:00:00+00:00"), ("a", "2026-01-03T00:00:00+00:00")):
        (tmp_path / name).mkdir()
        mf.write_manifest(tmp_path / name, {"created": created, "artifacts": {}})
    assert mf.resolve_run(None) == tmp_path / "a"


def test_bn_momentum_is_applied_saved_and_recorded(tmp_path, fmnist_small):
    run = tmp_path / "bn"
    result = CliRunner().invoke(app, ["train", "--model", "residual12", "--recipe", "seed", "--epochs", "1",
                                      "--bn-momentum", "0.9", "--train-limit", "300", "--test-limit", "100",
                                      "--run", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert mf.read_manifest(run)["training"]["recipe"]["bn_momentum"] == 0.9
    model = keras.saving.load_model(run / "model.keras")
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
    # Without the flag the seed model keeps Keras' default.
    from exporter.models import build_model

    built = build_model("residual12", (28, 28, 1), 10)
    assert {l.momentum for l in built.layers if isinstance(l, keras.layers.BatchNormalization)} == {0.99}


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_bn_momentum_out_of_range_is_a_usage_error(tmp_path, value):
    result = CliRunner().invoke(app, ["train", "--bn-momentum", value, "--run", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "--bn-momentum must be in [0, 1)" in result.stderr and not (tmp_path / "r").exists()
