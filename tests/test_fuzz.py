"""Fuzzing the parsers of everything a user hands us (IDX, gzip, CIFAR-10 pickles, manifest.json):
whatever the bytes, the only exception that may escape is a ResexportError (one line at the CLI);
anything else would be an 'internal error'. Plus properties of the stratified sampler that the
calibration split relies on."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter import data
from exporter import manifest as mf
from exporter.errors import ResexportError, UsageError
from tests.conftest import cifar_batch_bytes

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def only_resexport_errors(fn, *args, **kwargs):
    """Call fn; a ResexportError (or success) is fine, any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except ResexportError as exc:
        assert exc.one_line() and "\n" not in exc.one_line()
        return None


# ---------------------------------------------------------------------------------------- IDX

def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


valid_idx = st.one_of(
    st.lists(st.integers(0, 255), max_size=40).map(lambda v: idx_bytes(np.array(v, np.uint8))),
    st.tuples(st.integers(0, 4), st.integers(0, 6), st.integers(0, 6), st.integers(0, 2**32 - 1)).map(
        lambda t: idx_bytes(np.random.default_rng(t[3]).integers(0, 256, t[:3]))),
)


@st.composite
def mutated(draw, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid blob with a few bytes flipped, cut, inserted or appended."""
    blob = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "append", "overwrite-int"]))
        pos = draw(st.integers(0, max(len(blob) - 1, 0)))
        if op == "flip" and blob:
            blob[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del blob[pos:]
        elif op == "insert":
            blob[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "append":
            blob += draw(st.binary(min_size=1, max_size=64))
        elif op == "overwrite-int":  # e.g. a dimension or a length prefix
            blob[pos:pos + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    return bytes(blob)


def check_idx_result(blob: bytes, arr) -> None:
    if arr is not None:  # a parse that succeeds accounts for every byte
        assert arr.dtype == np.uint8 and arr.ndim in (1, 3)
        assert 4 + 4 * arr.ndim + arr.size == len(blob)


@FUZZ
@given(st.binary(max_size=2000))
@example(b"")
@example(b"\x00\x00\x08\x03")
# 2**31 * 2**31 * 4 wraps to 0 in int64: the header must not be taken to promise an empty payload
@example(b"\x00\x00\x08\x03" + (2**31).to_bytes(4, "big") * 2 + (4).to_bytes(4, "big"))
@example(b"\x00\x00\x08\x01" + (2**32 - 1).to_bytes(4, "big"))
def test_parse_idx_arbitrary_bytes(blob):
    check_idx_result(blob, only_resexport_errors(data.parse_idx, blob, name="fuzz.idx"))


@FUZZ
@given(mutated(valid_idx))
def test_parse_idx_mutated_valid_files(blob):
    check_idx_result(blob, only_resexport_errors(data.parse_idx, blob, name="fuzz.idx"))


@FUZZ
@given(st.one_of(st.binary(max_size=2000),
                 st.binary(max_size=500).map(gzip.compress),
                 mutated(valid_idx.map(gzip.compress)),
                 valid_idx.map(lambda b: gzip.compress(b) + b"trailing"),
                 st.binary(max_size=100).map(lambda b: b"\x1f\x8b" + b)))
def test_read_idx_gz_arbitrary_files(scratch, blob):
    path = scratch / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(blob)
    only_resexport_errors(data.read_idx_gz, path)


# -------------------------------------------------------------------------------------- CIFAR-10

valid_batch = st.tuples(st.integers(0, 3), st.integers(0, 2**32 - 1)).map(
    lambda t: cifar_batch_bytes(np.random.default_rng(t[1]).integers(0, 256, (t[0], 32, 32, 3)),
                                np.random.default_rng(t[1]).integers(0, 10, t[0])))

odd_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=20), st.text(max_size=20),
              st.complex_numbers(),
              st.sampled_from([np.zeros((2, 3072), np.uint8), np.zeros((2, 3072), np.float32),
                               np.zeros((1, 2, 3072), np.uint8), np.zeros((0, 3072), np.uint8),
                               np.zeros(3072, np.uint8), np.array("x"), np.array([None, 1], dtype=object)])),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.binary(max_size=8), children, max_size=3),
    max_leaves=12)


@st.composite
def odd_batches(draw) -> bytes:
    """Well-formed pickles of the right shape of dict, with wrong-typed 'data' and 'labels'."""
    obj = {}
    for key in (b"data", b"labels"):
        if draw(st.booleans()) or key == b"data":
            obj[key if draw(st.booleans()) else key.decode()] = draw(odd_values)
    top = draw(st.sampled_from(["dict", "list", "value"]))
    return pickle.dumps(obj if top == "dict" else [obj] if top == "list" else draw(odd_values),
                        protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL)))


def check_cifar_result(parsed) -> None:
    if parsed is not None:
        images, labels = parsed
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
        assert labels.dtype == np.int64 and labels.shape == (len(images),)


@FUZZ
@given(st.one_of(st.binary(max_size=2000), mutated(valid_batch)))
@example(pickle.dumps({b"data": print, b"labels": []}))
def test_parse_cifar_batch_arbitrary_and_mutated_bytes(blob):
    check_cifar_result(only_resexport_errors(data.parse_cifar_batch, blob, name="data_batch_1"))


@FUZZ
@given(odd_batches())
def test_parse_cifar_batch_wrong_types(blob):
    check_cifar_result(only_resexport_errors(data.parse_cifar_batch, blob, name="data_batch_1"))


# ------------------------------------------------------------------------------------- manifest

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)

manifest_like = st.fixed_dictionaries(
    {}, optional={"schema": st.one_of(st.integers(-3, 3), json_values), "model": json_values,
                  "dataset": json_values, "artifacts": json_values, "created": json_values})


@FUZZ
@given(st.one_of(st.text(max_size=300), json_values.map(json.dumps), manifest_like.map(json.dumps)))
@example('{"schema": ' + "9" * 5000 + "}")  # over Python's int digit limit: ValueError, not JSONDecodeError
@example("[" * 100_000)
@example('{"schema": 1, "artifacts": []}')
@example('{"schema": 99}')
def test_read_manifest_arbitrary_text(scratch, text):
    run = scratch / "run-text"
    run.mkdir(exist_ok=True)
    (run / mf.MANIFEST).write_text(text, encoding="utf-8", errors="surrogatepass")
    man = only_resexport_errors(mf.read_manifest, run)
    if man is not None:
        assert isinstance(man, dict) and isinstance(man["artifacts"], dict)
        assert isinstance(man["schema"], int) and man["schema"] <= mf.SCHEMA


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xff\xfe{}")
def test_read_manifest_arbitrary_bytes(scratch, blob):
    run = scratch / "run-bytes"
    run.mkdir(exist_ok=True)
    (run / mf.MANIFEST).write_bytes(blob)
    only_resexport_errors(mf.read_manifest, run)


# ----------------------------------------------------------------------- stratified sampling

@FUZZ
@given(st.lists(st.integers(-3, 12), min_size=1, max_size=300), st.data(), st.integers(0, 2**32 - 1))
def test_stratified_indices_are_unique_sorted_in_range_and_deterministic(labels, draw, seed):
    labels = np.array(labels)
    n = draw.draw(st.integers(1, len(labels)))
    idx = data.stratified_indices(labels, n, seed=seed)
    assert idx.dtype == np.int64 and len(idx) == n
    assert np.all(np.diff(idx) > 0)  # sorted and unique
    assert idx.min() >= 0 and idx.max() < len(labels)
    assert np.array_equal(idx, data.stratified_indices(labels, n, seed=seed))
    # as even as possible: a class gets 2+ fewer than another only when it has run out
    counts = {c: int(np.sum(labels[idx] == c)) for c in np.unique(labels)}
    sizes = {c: int(np.sum(labels == c)) for c in counts}
    for a in counts:
        assert counts[a] == sizes[a] or all(counts[a] >= counts[b] - 1 for b in counts)


@FUZZ
@given(st.lists(st.integers(-2, 5), max_size=50), st.integers(-5, 60))
def test_stratified_indices_refuses_impossible_counts(labels, n):
    labels = np.array(labels, dtype=np.int64)
    if 1 <= n <= len(labels):
        assert len(data.stratified_indices(labels, n)) == n
    else:
        with pytest.raises(UsageError):
            data.stratified_indices(labels, n)


@FUZZ
@given(st.integers(10, 40), st.integers(0, 5), st.integers(0, 2**32 - 1))
def test_calibration_comes_from_the_training_split_only(n_train_extra, seed, data_seed):
    rng = np.random.default_rng(data_seed)
    n_train, n_test = 10 + n_train_extra, 7
    # train images are all >= 0.5, test images all < 0.5: any test image in the calibration set shows
    x_train = rng.uniform(0.5, 1.0, (n_train, 4, 4, 1)).astype(np.float32)
    x_test = rng.uniform(0.0, 0.5, (n_test, 4, 4, 1)).astype(np.float32)
    ds = data.Dataset("fuzz", x_train, rng.integers(0, 3, n_train), x_test, rng.integers(0, 3, n_test),
                      ("a", "b", "c"))
    n = int(rng.integers(data.MIN_CALIBRATION, n_train + 1))
    cal = data.calibration_set(ds, n, seed=seed)
    assert cal.describe() == {"split": "train", "count": n, "indices_sha256": cal.hash}
    assert np.array_equal(cal.x, ds.x_train[cal.indices]) and cal.x.min() >= 0.5
    assert cal.hash == data.calibration_set(ds, n, seed=seed).hash


# ------------------------------------------------------------- valid inputs must be accepted
# The fuzzers above accept any refusal; these make sure a parser that refused everything would fail:
# every well-formed file is read back exactly.
VALID = settings(FUZZ, max_examples=50)

idx_arrays = st.one_of(
    st.lists(st.integers(0, 255), max_size=40).map(lambda v: np.array(v, np.uint8)),
    st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**32 - 1)).map(
        lambda t: np.random.default_rng(t[3]).integers(0, 256, t[:3]).astype(np.uint8)))


@VALID
@given(idx_arrays)
def test_valid_idx_is_read_back_exactly(array):
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(array), name="valid.idx"), array)


@VALID
@given(idx_arrays)
def test_valid_idx_gz_is_read_back_exactly(scratch, array):
    path = scratch / "valid-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(data.read_idx_gz(path), array)


@VALID
@given(st.integers(1, 4), st.integers(0, 2**32 - 1), st.sampled_from([2, 3, 4]))
def test_valid_cifar_batch_is_read_back_exactly(n, seed, protocol):
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, n)
    blob = pickle.dumps(pickle.loads(cifar_batch_bytes(images, labels)), protocol=protocol)
    got_images, got_labels = data.parse_cifar_batch(blob, name="data_batch_1")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@settings(VALID, max_examples=15)  # each example writes atomically (fsync): slow
@given(st.dictionaries(st.text(min_size=1, max_size=10), st.dictionaries(st.text(max_size=10), json_values, max_size=3),
                       max_size=4),
       st.dictionaries(st.text(max_size=10), json_values, max_size=4))
def test_a_manifest_written_by_us_is_read_back(scratch, artifacts, model):
    run = scratch / "run-valid"
    run.mkdir(exist_ok=True)
    man = {"created": "2026-01-01T00:00:00Z", "model": model, "dataset": {"name": "x"}, "artifacts": artifacts}
    mf.write_manifest(run, man)
    back = mf.read_manifest(run)
    assert back["artifacts"] == artifacts and back["model"] == model and back["schema"] == mf.SCHEMA


def test_a_cifar_batch_pickled_with_protocol_5_is_read():
    """Found by the fuzzer above: numpy pickles arrays with protocol 5 through numpy._core.numeric._frombuffer."""
    images, labels = np.zeros((1, 32, 32, 3), np.uint8), [3]
    blob = pickle.dumps(pickle.loads(cifar_batch_bytes(images, labels)), protocol=5)
    np.testing.assert_array_equal(data.parse_cifar_batch(blob, name="data_batch_1")[0], images)
