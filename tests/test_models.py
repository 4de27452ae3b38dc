import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import BLOCK_TF
from exporter.models import MODELS, SEED003_FILTERS, SEED003_STAGES, build_model, count_depth


def conv(k, cin, cout):
    return k * k * cin * cout + cout


def bn(c):
    return 4 * c


def seed003_params(depth, residual, in_ch=1, classes=10, side=28):
    """Parameter count of seed 003's net, counted by hand from its layer list."""
    total, c = conv(2, in_ch, 32) + bn(32), 32
    for s, (f, n) in enumerate(zip(SEED003_FILTERS, SEED003_STAGES[depth])):
        if residual and s > 0:
            total += conv(1, c, f)
        for _ in range(n):
            total += conv(2, c, f) + bn(f)
            c = f
        side //= 2
    return total + side * side * c * classes + classes


def resnet_params(blocks, in_ch=3, classes=10):
    total, c = conv(3, in_ch, 64) + bn(64), 64
    for f, n, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
        for b in range(n):
            total += conv(3, c, f) + bn(f) + conv(3, f, f) + bn(f)
            if b == 0 and stride != 1:
                total += conv(1, c, f)
            c = f
    return total + c * classes + classes


EXPECTED = {f"{'residual' if r else 'plain'}{d}": seed003_params(d, r) for d in SEED003_STAGES for r in (0, 1)}
EXPECTED["resnet18"] = resnet_params((2, 2, 2, 2))
EXPECTED["resnet34"] = resnet_params((3, 4, 6, 3))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_with_its_depth_and_params(name):
    spec = MODELS[name]
    shape = (32, 32, 3) if spec.dataset == "cifar10" else (28, 28, 1)
    model = build_model(name, shape, 10)
    assert count_depth(model) == spec.depth == (int("".join(c for c in name if c.isdigit()) or 6))
    assert model.output_shape == (None, 10)
    assert model.layers[-1].get_config()["activation"] == "softmax"  # the documented convention
    if name in EXPECTED:
        assert model.count_params() == EXPECTED[name]


def test_seed003_residual_shortcuts():
    m = build_model("residual12", (28, 28, 1), 10)
    projections = [l for l in m.layers if l.name.endswith("_proj")]
    assert [l.filters for l in projections] == [64, 128, 256]
    assert all(tuple(l.kernel_size) == (1, 1) and l.get_config()["activation"] == "relu" for l in projections)
    assert len([l for l in m.layers if l.name.endswith("_add")]) == 4
    assert m.get_layer("dropout").rate == 0.5


def test_resnet18_stem_is_valid_conv_and_stride1_pool():
    m = build_model("resnet18", (32, 32, 3), 10)
    assert m.get_layer("stem_conv").padding == "valid"
    assert m.get_layer("stem_pool").output.shape[1:3] == (30, 30)
    assert [l.strides for l in m.layers if l.name.endswith("_proj")] == [(2, 2)] * 3


def test_input_shape_and_classes_come_from_the_dataset():
    m = build_model("resnet18", (28, 28, 1), 7)
    assert m.input_shape == (None, 28, 28, 1) and m.output_shape == (None, 7)




def test_models_build_and_train_under_jax_without_tensorflow(tmp_path):
    """The GPU path is Keras 3 on JAX with no TensorFlow installed: every model must build there,
    training must write a complete run folder, and the depth study's command must run as is."""
    code = BLOCK_TF + (
        "import exporter.models as m, sys\n"
        "for n in m.MODELS: m.build_model(n, (32, 32, 3) if m.MODELS[n].dataset == 'cifar10' else (28, 28, 1), 10)\n"
        "from dataclasses import replace\n"
        "from exporter import data, train, manifest\n"
        "ds = data.load_dataset('fashion_mnist', train_limit=300, test_limit=100)\n"
        "res = train.train(model_name='resmini', dataset=ds, run=sys.argv[1], recipe=replace(train.RECIPES['fast'], epochs=1))\n"
        "import json, keras, numpy as np\n"
        "man = manifest.read_manifest(res.run)\n"
        "again = keras.saving.load_model(res.run / 'model.keras')  # the run's model, reloaded, scores what it recorded\n"
        "p = keras.ops.convert_to_numpy(again.predict(ds.x_test, verbose=0))\n"
        "acc = float((p.argmax(1) == ds.y_test).mean())\n"
        "assert np.isfinite(p).all() and abs(acc - man['training']['test_accuracy']) <= 1 / len(ds.y_test), acc\n"
        "hist = json.loads((res.run / 'history.json').read_text())\n"
        "assert [h['epoch'] for h in hist] == [1] and np.isfinite(hist[0]['loss'])\n"
        "assert man['model']['sha256'] and man['artifacts'] == {}\n"
        # the depth study's command as the GPU machine runs it (one JAX process for both: it starts slowly)
        "from exporter.cli import main\n"
        "sys.argv = ['resexport', 'experiment', 'depth', '--depths', '12', '--epochs', '1',\n"
        "            '--train-limit', '300', '--test-limit', '100', '--out', sys.argv[2], '--json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print('ok', len(m.MODELS), man['training']['backend'])\n")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run"), str(tmp_path / "d")],
                          capture_output=True, text=True, env=env, timeout=600,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "d" / "depth.json").read_text())
    assert doc["backend"] == "jax" and [r["backend"] for r in doc["rows"]] == ["jax", "jax"]
    assert (tmp_path / "d" / "depth.png").stat().st_size > 1000
    assert proc.stdout.strip().splitlines()[-1] == f"ok {len(MODELS)} jax"
    assert (tmp_path / "run" / "model.keras").is_file()
