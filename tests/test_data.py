import gzip
import tarfile

import numpy as np
import pytest

from exporter import data
from exporter.errors import DataError, UsageError
from tests.conftest import cifar_batch_bytes, write_cifar_folder, write_idx, write_idx_dataset


def test_real_fashion_mnist_has_the_documented_shape(fmnist):
    assert fmnist.x_train.shape == (60000, 28, 28, 1) and fmnist.x_test.shape == (10000, 28, 28, 1)
    assert fmnist.x_train.dtype == np.float32 and 0.0 <= fmnist.x_train.min() and fmnist.x_train.max() <= 1.0
    assert np.bincount(fmnist.y_test).tolist() == [1000] * 10
    assert fmnist.class_names[9] == "Ankle boot"


def test_idx_round_trip(tmp_path):
    imgs = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256
    parsed = data.read_idx_gz(write_idx(tmp_path / "x.gz", imgs))
    assert parsed.shape == (3, 28, 28) and np.array_equal(parsed, imgs)
    labels = data.read_idx_gz(write_idx(tmp_path / "y.gz", [3, 1, 4]))
    assert labels.tolist() == [3, 1, 4]


def test_idx_folder_loads_and_scales(tmp_path):
    ds = data.load_dataset("fashion_mnist", data_dir=write_idx_dataset(tmp_path / "fm"))
    assert ds.x_train.shape == (60, 28, 28, 1) and ds.source == str(tmp_path / "fm")
    assert ds.x_train.max() <= 1.0 and ds.x_train.dtype == np.float32


@pytest.mark.parametrize("case", ["bad_magic", "truncated", "not_gzip_and_short"])
def test_idx_corrupt_files_are_clear_errors(tmp_path, case):
    path = tmp_path / "x.gz"
    if case == "bad_magic":
        write_idx(path, np.zeros((2, 4, 4)), magic=b"\x00\x00\x09\x03")
    elif case == "truncated":
        payload = gzip.decompress(write_idx(path, np.zeros((5, 4, 4))).read_bytes())
        path.write_bytes(gzip.compress(payload[:-7]))
    else:
        path.write_bytes(b"\x01\x02")
    with pytest.raises(DataError, match=str(path.name)):
        data.read_idx_gz(path)


def test_corrupt_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((5, 4, 4)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt gzip"):
        data.read_idx_gz(path)


def test_labels_out_of_range(tmp_path):
    folder = write_idx_dataset(tmp_path / "fm", labels_train=np.full(60, 12))
    with pytest.raises(DataError, match="out of range"):
        data.load_dataset("fashion_mnist", data_dir=folder)


def test_train_test_shape_mismatch(tmp_path):
    folder = write_idx_dataset(tmp_path / "fm")
    write_idx(folder / data.IDX_FILES["x_test"], np.zeros((20, 27, 28)))
    with pytest.raises(DataError, match="shape"):
        data.load_dataset("fashion_mnist", data_dir=folder)


def test_missing_data_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(DataError) as info:
        data.load_dataset("cifar10", data_dir=tmp_path, download=False)
    msg = info.value.one_line()
    assert str(tmp_path) in msg and "cifar-10-python.tar.gz" in msg and str(tmp_path / "kh") in msg


def test_cifar_folder_and_archive_parse_exactly(tmp_path):
    folder, truth = write_cifar_folder(tmp_path / "cifar-10-batches-py")
    ds = data.load_dataset("cifar10", data_dir=folder, download=False)
    assert ds.x_train.shape == (100, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
    imgs, labels = truth["data_batch_2"]
    assert np.array_equal(ds.x_train[20:40], imgs.astype(np.float32) / 255)
    assert ds.y_train[20:40].tolist() == list(labels)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    ds2 = data.load_dataset("cifar10", data_dir=archive, download=False)
    assert np.array_equal(ds2.x_test, ds.x_test) and ds2.class_names == data.CIFAR10_CLASSES


def test_cifar_channel_order_is_rgb_planes():
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 0, 1, 0], img[0, 0, 1, 2] = 200, 50  # R and B of pixel (row 0, col 1)
    parsed, _ = data.parse_cifar_batch(cifar_batch_bytes(img, [7]))
    assert parsed[0, 0, 1].tolist() == [200, 0, 50]


@pytest.mark.parametrize("mutate", ["garbage", "wrong_width", "label_count", "not_dict", "evil_global"])
def test_cifar_corrupt_batches(mutate):
    import pickle

    good = cifar_batch_bytes(np.zeros((2, 32, 32, 3), np.uint8), [0, 1])
    blob = {
        "garbage": good[:40],
        "wrong_width": pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
        "label_count": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
        "not_dict": pickle.dumps([1, 2, 3]),
        "evil_global": pickle.dumps({b"data": print, b"labels": []}),
    }[mutate]
    with pytest.raises(DataError):
        data.parse_cifar_batch(blob, name="batch")


def test_cifar_labels_out_of_range(tmp_path):
    folder, _ = write_cifar_folder(tmp_path / "c")
    (folder / "test_batch").write_bytes(cifar_batch_bytes(np.zeros((2, 32, 32, 3), np.uint8), [0, 10]))
    with pytest.raises(DataError, match="out of range"):
        data.load_dataset("cifar10", data_dir=folder, download=False)


def test_calibration_is_stratified_deterministic_and_from_train_only(fmnist):
    a = data.calibration_set(fmnist, 200, seed=0)
    b = data.calibration_set(fmnist, 200, seed=0)
    assert a.hash == b.hash and np.array_equal(a.indices, b.indices)
    assert np.bincount(fmnist.y_train[a.indices]).tolist() == [20] * 10
    assert data.calibration_set(fmnist, 200, seed=1).hash != a.hash
    # Disjoint from the test set by construction: every calibration image is a training image,
    # and (Fashion-MNIST has no exact duplicates across splits among these) none equals a test image.
    assert np.array_equal(a.x, fmnist.x_train[a.indices])
    test_keys = {img.tobytes() for img in (fmnist.x_test * 255).astype(np.uint8)}
    assert not any(img.tobytes() in test_keys for img in (a.x * 255).astype(np.uint8))


def test_calibration_too_few_samples(fmnist_small):
    with pytest.raises(UsageError, match="too few"):
        data.calibration_set(fmnist_small, 3)


def test_subset_is_stratified(fmnist):
    small = data.subset(fmnist, train_limit=500, test_limit=100)
    assert np.bincount(small.y_train).tolist() == [50] * 10 and len(small.y_test) == 100
    assert small.subset["train"]["count"] == 500
