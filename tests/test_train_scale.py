"""Training at scale: the streamed input, data-parallel devices, resume after Ctrl-C or kill -9.

The multi-device test runs in a child process with KERAS_BACKEND=jax and 4 virtual CPU devices (the
backend is chosen before Keras is imported). Every model here is tiny and trains for 1-3 epochs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter import manifest as mf
from exporter.stream import Batches, augment_batch, crop_padding, epoch_order, parse_augment

ROOT = Path(__file__).resolve().parents[1]


def _child_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


# ------------------------------------------------------------------------------ the stream (no Keras model)

def test_epoch_order_is_a_seeded_permutation_per_epoch():
    a, b, c = epoch_order(100, 0, 0), epoch_order(100, 0, 0), epoch_order(100, 0, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert sorted(a) == list(range(100)) and sorted(c) == list(range(100))
    assert not np.array_equal(epoch_order(100, 1, 0), a)


def test_augmentation_flip_and_crop():
    x = np.arange(2 * 16 * 16 * 1, dtype=np.float32).reshape(2, 16, 16, 1)
    flipped = augment_batch(x, ("flip",), np.random.default_rng(0))
    for i in range(2):  # each image is itself or its mirror, and the input is untouched
        assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1])
    assert np.array_equal(x, np.arange(x.size, dtype=np.float32).reshape(x.shape))
    cropped = augment_batch(x, ("crop",), np.random.default_rng(1))
    assert cropped.shape == x.shape and crop_padding(16) == 2
    again = augment_batch(x, ("crop",), np.random.default_rng(1))
    assert np.array_equal(cropped, again)  # seeded: the same batch of the same epoch is the same
    # a crop of a reflect-padded image is a shifted window: its centre pixel is in the source image
    assert all(set(np.unique(cropped[i])) <= set(np.unique(x[i])) for i in range(2))
    assert parse_augment("flip, crop,flip") == ("flip", "crop") and parse_augment(None) == ()


def test_unknown_augmentation_is_a_usage_error():
    from exporter.errors import UsageError

    with pytest.raises(UsageError, match="rotate"):
        parse_augment("flip,rotate")


@pytest.mark.parametrize("workers", [1, 3])
def test_batches_visit_every_image_once_per_epoch(workers):
    n = 103
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1), np.float32)
    y = np.arange(n)
    s = Batches(x, y, np.arange(n), 10, seed=5, shuffle=True, workers=workers)
    assert s.num_batches == 11
    seen = []
    for epoch in (0, 1):
        s.epoch = epoch
        labels = np.concatenate([s[i][1] for i in range(len(s))])
        assert sorted(labels) == list(range(n))
        assert all(np.array_equal(s[i][0][:, 0, 0, 0], s[i][1]) for i in range(len(s)))  # x and y stay paired
        seen.append(labels)
    assert not np.array_equal(*seen)
    full = Batches(x, y, np.arange(n), 10, drop_remainder=True, max_batches=4)
    assert full.num_batches == 4 and len(full[3][1]) == 10
    shards = [Batches(x, y, np.arange(n), 10, shard=(k, 2))[0][1] for k in (0, 1)]
    assert sorted(np.concatenate(shards)) == list(range(10))  # two hosts feed the two halves of a batch


def test_batches_stream_an_image_folder(tmp_path):
    """The stream reads the user's own folder through the dataset's lazy images: the same pixels as
    decoding the whole split, batch by batch, in the seeded order."""
    from owndata_helpers import write_folder

    from exporter.data.choose import open_data

    ds = open_data(str(write_folder(tmp_path / "imgs", per_class=6, size=(24, 24))))
    n = len(ds.y_train)
    s = Batches(ds.x_train, ds.y_train, np.arange(n), 5, seed=3, shuffle=True, workers=2)
    whole = np.asarray(ds.x_train)
    order = epoch_order(n, 3, 0)
    for i in range(len(s)):
        xb, yb = s[i]
        pos = order[i * 5:(i + 1) * 5]
        assert np.array_equal(xb, whole[pos]) and np.array_equal(yb, ds.y_train[pos])


# ------------------------------------------------------------------------------ training (TensorFlow backend here)

@pytest.fixture(scope="module")
def tiny_fmnist():
    from exporter import data

    return data.load_dataset("fashion_mnist", train_limit=256, test_limit=128)


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_fmnist, monkeypatch):
    from exporter import train as tr

    recipe = replace(tr.RECIPES["fast"], epochs=3, batch_size=32)
    kw = dict(model_name="resmini", dataset=tiny_fmnist, recipe=recipe, seed=1, augment=("flip", "crop"),
              val_split=0.125)
    whole = tr.train(run=tmp_path / "whole", **kw)

    real = tr._checkpoint_callback

    def stop_after_epoch_2(*a, **k):  # Ctrl-C right after the second epoch's checkpoint
        cb = real(*a, **k)
        inner = cb.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            inner(epoch, logs)
            if epoch == 1:
                raise KeyboardInterrupt

        cb.on_epoch_end = on_epoch_end
        return cb

    monkeypatch.setattr(tr, "_checkpoint_callback", stop_after_epoch_2)
    run = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        tr.train(run=run, **kw)
    assert not run.exists()  # nothing half-written is a run
    assert tr.read_checkpoint(run)["epoch"] == 2
    monkeypatch.setattr(tr, "_checkpoint_callback", real)
    again = tr.train(run=run, **kw)  # the same call continues
    assert again.resumed and not whole.resumed
    assert not tr.staging_dir(run).exists()
    for a, b in zip(_weights(whole.model), _weights(again.model)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    man = mf.read_manifest(run)["training"]
    assert man["resumed"] and man["resumed_from_epochs"] == [2] and man["augmentation"] == ["flip", "crop"]
    assert man["validation"]["images"] + man["train_images"] == 256 and 24 <= man["validation"]["images"] <= 40
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3] and "val_loss" in hist[0]
    assert again.test_accuracy == pytest.approx(whole.test_accuracy, abs=1 / 128 + 1e-9)


def test_more_devices_under_tensorflow_is_refused_in_one_line(tmp_path):
    from exporter.cli import app

    result = CliRunner().invoke(app, ["train", "--devices", "4", "--train-limit", "64", "--test-limit", "32",
                                      "--epochs", "1", "--run", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "KERAS_BACKEND=jax" in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ child processes

FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import numpy as np
    from dataclasses import replace
    from exporter import data
    from exporter.train import RECIPES, train
    ds = data.load_dataset("fashion_mnist", train_limit=256, test_limit=64)
    recipe = replace(RECIPES["fast"], epochs=1, batch_size=64)
    out = {}
    for n in ("1", "4"):
        res = train(model_name="resmini", dataset=ds, run=sys.argv[1] + "/d" + n, recipe=recipe, seed=2,
                    devices=n, augment=("flip",), steps_per_execution=1)
        out[n] = [np.asarray(w) for w in res.model.get_weights()]
    import keras
    from exporter.models import build_model
    keras.utils.set_random_seed(2)
    init = [np.asarray(w) for w in build_model("resmini", ds.input_shape, ds.num_classes).get_weights()]
    flat = lambda ws: np.concatenate([w.ravel() for w in ws])
    moved = float(np.linalg.norm(flat(out["1"]) - flat(init)))
    apart = float(np.linalg.norm(flat(out["1"]) - flat(out["4"])))
    print(json.dumps({"moved": moved, "apart": apart}))
""")


@pytest.mark.slow
def test_four_virtual_devices_train_the_same_weights_as_one(tmp_path):
    env = _child_env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Adam moves every weight by ~lr a step whatever its gradient's size, so a summation-order
    # difference in a near-zero gradient shows in single weights; the whole stays together: the two
    # runs end far closer to each other than training moved them, with the same losses.
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["apart"] < 0.05 * got["moved"], got  # measured here: 0.011
    losses = [[h["loss"] for h in json.loads((tmp_path / d / "history.json").read_text())] for d in ("d1", "d4")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)
    four = mf.read_manifest(tmp_path / "d4")["training"]
    assert four["backend"] == "jax" and four["devices"]["count"] == 4 and four["devices"]["kind"] == "cpu"
    assert four["global_batch"] == 64 and four["per_device_batch"] == 16
    assert mf.read_manifest(tmp_path / "d1")["training"]["devices"]["count"] == 1


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes(tmp_path):
    """kill -9 of the `train` child after its first checkpoint, then `train --resume RUN`."""
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "exporter", "train", "--train-limit", "512", "--test-limit", "64", "--epochs", "6",
           "--batch-size", "32", "--run", str(run), "--augment", "flip", "--json"]
    child = subprocess.Popen(cmd, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state_file = run.parent / f".{run.name}.partial" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 240
    try:
        while not state_file.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state_file.exists(), child.stderr.read().decode()[-2000:] if child.poll() is not None else "timeout"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not run.exists()
    done = json.loads(state_file.read_text())["epoch"]
    assert 1 <= done < 6
    resumed = subprocess.run([sys.executable, "-m", "exporter", "train", "--resume", str(run), "--json"],
                             env=_child_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["resumed"] is True
    man = mf.read_manifest(run)["training"]
    assert man["resumed"] and man["resumed_from_epochs"] == [done] and man["recipe"]["epochs"] == 6
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == list(range(1, 7))


def test_find_partial_and_resume_errors(tmp_path):
    """Re-running the same command without --run finds the unfinished run with the same inputs key;
    --resume on a folder with nothing to resume is a one-line usage error."""
    from exporter.cli import app
    from exporter.fsutil import write_json_atomic
    from exporter.train import CHECKPOINT_DIR, STATE_FILE, find_partial, staging_dir

    run = tmp_path / "r1"
    ckpt = staging_dir(run) / CHECKPOINT_DIR
    ckpt.mkdir(parents=True)
    write_json_atomic(ckpt / STATE_FILE, {"inputs_key": "abc", "run": str(run), "epoch": 1, "weights": "w"})
    assert find_partial("abc", tmp_path) == run and find_partial("other", tmp_path) is None
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "nothing")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "nothing" in lines[0], result.output
