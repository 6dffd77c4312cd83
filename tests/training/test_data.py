"""Tests for basinscope.training's data: built-in datasets, file formats, downloads, shared options."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import random
import struct
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from basinscope import training
from basinscope.errors import BasinscopeError
from basinscope.training import (
    DataBundle,
    _data,
    _downloads,
    load_dataset,
    read_idx,
    train_subset_indices,
)

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """Encode ``array`` as an IDX file: 0, 0, type code, ndim, big-endian sizes, data."""
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big.tobytes()


def tiny_mnist(seed: int = 0) -> dict[str, np.ndarray]:
    """Four small MNIST-like arrays keyed by IDX file stem."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([3, 0, 9, 1, 3], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 2], dtype=np.uint8),
    }


def write_idx_files(directory: Path, arrays: dict[str, np.ndarray], gz: bool) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        path = directory / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
        paths[stem] = path
    return paths


def assert_matches_tiny_mnist(bundle: DataBundle, arrays: dict[str, np.ndarray]) -> None:
    assert bundle.x_train.shape == (5, 1, 28, 28) and bundle.x_test.shape == (2, 1, 28, 28)
    assert bundle.x_train.dtype == torch.float32 and bundle.y_train.dtype == torch.int64
    assert bundle.n_classes == 10
    expected_train = torch.tensor(arrays["train-images-idx3-ubyte"], dtype=torch.float32) / 255
    expected_test = torch.tensor(arrays["t10k-images-idx3-ubyte"], dtype=torch.float32) / 255
    torch.testing.assert_close(bundle.x_train[:, 0], expected_train, rtol=0, atol=0)
    torch.testing.assert_close(bundle.x_test[:, 0], expected_test, rtol=0, atol=0)
    assert bundle.y_train.tolist() == [3, 0, 9, 1, 3]
    assert bundle.y_test.tolist() == [7, 2]


class FakeURLs:
    """Stands in for urllib's urlopen, serving byte strings by URL and recording requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requested: list[str] = []

    def __call__(self, url: str, timeout: float | None = None) -> io.BytesIO:
        self.requested.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in self.files:
            raise URLError("404")
        return io.BytesIO(self.files[name])


def offline(url: str, timeout: float | None = None) -> io.BytesIO:
    raise URLError("[Errno -3] Temporary failure in name resolution")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache root in tmp_path, selected through $BASINSCOPE_DATA."""
    root = tmp_path / "cache"
    monkeypatch.setenv("BASINSCOPE_DATA", str(root))
    return root


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_pixel_scale():
    b = load_dataset("digits", standardize=False)
    assert b.name == "digits" and b.n_classes == 10
    assert b.x_train.shape == (1437, 1, 8, 8) and b.x_test.shape == (360, 1, 8, 8)
    assert b.input_shape == (1, 8, 8)
    assert b.x_train.dtype == torch.float32 and b.y_train.dtype == torch.int64
    # Pixels are counts 0..16 divided by 16.
    assert b.x_train.min().item() == 0.0 and b.x_train.max().item() == 1.0
    assert torch.equal(b.x_train * 16, (b.x_train * 16).round())
    # Stratified: every class has 20% of its examples in the test split, up to rounding.
    all_y = torch.cat([b.y_train, b.y_test])
    expected = torch.bincount(all_y, minlength=10).double() * 0.2
    assert (torch.bincount(b.y_test, minlength=10) - expected).abs().max() <= 1
    # Together the splits hold all 1797 digits: the pixel total matches sklearn's.
    from sklearn.datasets import load_digits

    total = (b.x_train.double().sum() + b.x_test.double().sum()) * 16
    assert total.item() == load_digits().data.sum()


def test_digits_split_is_fixed_whatever_the_seed():
    a = load_dataset("digits", standardize=False, seed=0)
    b = load_dataset("digits", standardize=False, seed=123)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)


# --------------------------------------------------------------------------- standardisation


def test_standardize_gives_zero_mean_unit_std_on_train():
    b = load_dataset("digits")
    assert abs(b.x_train.double().mean().item()) < 1e-6
    assert abs(b.x_train.double().std(correction=0).item() - 1) < 1e-5


def test_standardize_is_per_channel_with_train_statistics(tmp_path: Path):
    rng = np.random.default_rng(1)
    scale = np.array([1.0, 10.0, 0.0]).reshape(1, 3, 1, 1)  # channel 2 is constant
    shift = np.array([0.0, -5.0, 7.0]).reshape(1, 3, 1, 1)
    x_tr = rng.normal(size=(50, 3, 4, 4)) * scale + shift
    x_te = rng.normal(size=(20, 3, 4, 4)) * scale + shift
    y = np.zeros(50, dtype=np.int64)
    path = write_npz(
        tmp_path / "c.npz", x_train=x_tr, y_train=y, x_test=x_te, y_test=np.zeros(20, np.int64)
    )
    b = load_dataset(str(path))
    x = b.x_train.double()
    torch.testing.assert_close(
        x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=x.dtype), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        x.std(dim=(0, 2, 3), correction=0),
        torch.tensor([1.0, 1.0, 0.0], dtype=x.dtype),
        atol=1e-5,
        rtol=0,
    )
    # The test split uses the training statistics, not its own.
    x_tr32 = torch.tensor(x_tr, dtype=torch.float32).double()
    mean = x_tr32.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr32.std(dim=(0, 2, 3), keepdim=True, correction=0)
    std[:, 2] = 1.0
    expected = (torch.tensor(x_te, dtype=torch.float32).double() - mean) / std
    torch.testing.assert_close(b.x_test.double(), expected, atol=1e-5, rtol=0)
    assert torch.isfinite(b.x_test).all()


# --------------------------------------------------------------------------- train_size


@pytest.fixture
def indexed_npz(tmp_path: Path) -> Path:
    """An .npz whose single input feature is the example's index, so subsets can be read off."""
    n = 200
    return write_npz(
        tmp_path / "indexed.npz",
        x_train=np.arange(n, dtype=np.float32),
        y_train=np.arange(n) % 4,
        x_test=np.arange(10, dtype=np.float32),
        y_test=np.arange(10) % 4,
    )


def kept(path: Path, train_size: float | int | None, seed: int = 0) -> set[int]:
    b = load_dataset(str(path), train_size=train_size, seed=seed, standardize=False)
    assert b.x_train.shape[1:] == (1,)
    return {int(v) for v in b.x_train[:, 0]}


def test_train_size_fraction_and_count(indexed_npz: Path):
    assert len(kept(indexed_npz, 0.1)) == 20
    assert len(kept(indexed_npz, 0.25)) == 50
    assert len(kept(indexed_npz, 37)) == 37
    assert len(kept(indexed_npz, np.int64(5))) == 5
    assert kept(indexed_npz, 1.0) == kept(indexed_npz, None) == set(range(200))
    assert load_dataset("digits", train_size=0.1).x_train.shape[0] == round(0.1 * 1437)


def test_train_size_keeps_labels_with_their_inputs(indexed_npz: Path):
    b = load_dataset(str(indexed_npz), train_size=0.3, seed=4, standardize=False)
    assert torch.equal(b.y_train, b.x_train[:, 0].long() % 4)
    assert b.x_test.shape == (10, 1)  # the test split is never subsetted


def test_train_size_subsets_are_nested_and_seeded(indexed_npz: Path):
    for seed in (0, 1, 2):
        small, mid, full = (kept(indexed_npz, f, seed) for f in (0.1, 0.3, 1.0))
        assert small < mid < full
        assert kept(indexed_npz, 20, seed) == small  # a count and a fraction agree
        assert kept(indexed_npz, 0.1, seed) == small  # and the same seed gives the same subset
    assert kept(indexed_npz, 0.1, seed=0) != kept(indexed_npz, 0.1, seed=1)
    # Prefixes of one permutation, returned sorted.
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(7))
    assert train_subset_indices(200, 0.3, seed=7).tolist() == sorted(perm[:60].tolist())


def test_train_size_leaves_global_torch_rng_alone():
    state = torch.get_rng_state()
    a = train_subset_indices(100, 0.5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    assert torch.equal(train_subset_indices(100, 0.5, seed=3), a)


@pytest.mark.parametrize("bad", [0, -1, 201, 0.0, -0.5, 1.5, 0.001, True, "half", float("nan")])
def test_train_size_bad_values_raise(indexed_npz: Path, bad: object):
    with pytest.raises(BasinscopeError, match="train_size"):
        load_dataset(str(indexed_npz), train_size=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- mnist1d


def test_mnist1d_shapes_and_global_rng_untouched():
    np.random.seed(12345)
    random.seed(678)
    np_before, py_before = np.random.get_state(), random.getstate()
    _data._mnist1d_arrays.cache_clear()  # force a real generation inside this test
    b = load_dataset("mnist1d", standardize=False)
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]
    assert random.getstate() == py_before
    assert b.x_train.shape == (4000, 1, 40) and b.x_test.shape == (1000, 1, 40)
    assert b.x_train.dtype == torch.float32 and b.y_train.dtype == torch.int64
    assert b.n_classes == 10 and set(b.y_train.tolist()) == set(range(10))
    # Fresh tensors each call: writing into one load does not change the next.
    b.x_train.zero_()
    again = load_dataset("mnist1d", standardize=False)
    assert again.x_train.abs().sum() > 0


# --------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D)],
)
def test_read_idx_round_trip(tmp_path: Path, dtype: type, code: int):
    array = (np.arange(24).reshape(2, 3, 4) * 7 - 40).astype(dtype)
    if dtype is np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    (tmp_path / "a.idx").write_bytes(idx_bytes(array, code))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array, code)))
    for name in ("a.idx", "a.idx.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.dtype(dtype) and out.shape == (2, 3, 4)
        assert np.array_equal(out, array)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_dataset_from_data_dir(tmp_path: Path, cache: Path, name: str, gz: bool):
    arrays = tiny_mnist()
    write_idx_files(tmp_path / "files", arrays, gz=gz)
    b = load_dataset(name, data_dir=tmp_path / "files", standardize=False)
    assert b.name == name
    assert_matches_tiny_mnist(b, arrays)
    assert not cache.exists()  # nothing was downloaded or cached


def test_idx_malformed_files_raise(tmp_path: Path):
    good = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    cases = {
        "magic.idx": b"\x08\x03" + good[2:],
        "code.idx": good[:2] + b"\x07" + good[3:],
        "short.idx": good[:-1],
        "header.idx": good[:6],
        "empty.idx": b"",
        "badgz.idx.gz": b"\x1f\x8b" + b"not gzip at all",
    }
    for filename, raw in cases.items():
        (tmp_path / filename).write_bytes(raw)
        with pytest.raises(BasinscopeError, match=filename.replace(".", r"\.")):
            read_idx(tmp_path / filename)


def test_idx_dataset_with_malformed_magic_raises(tmp_path: Path):
    paths = write_idx_files(tmp_path, tiny_mnist(), gz=False)
    raw = paths["train-images-idx3-ubyte"].read_bytes()
    paths["train-images-idx3-ubyte"].write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(BasinscopeError, match="not an IDX file"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_dataset_count_mismatch_raises(tmp_path: Path):
    arrays = tiny_mnist()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:4]
    write_idx_files(tmp_path, arrays, gz=True)
    with pytest.raises(BasinscopeError, match="5 images"):
        load_dataset("mnist", data_dir=tmp_path)


def test_data_dir_missing_file_names_it(tmp_path: Path, cache: Path, monkeypatch):
    paths = write_idx_files(tmp_path, tiny_mnist(), gz=True)
    paths["t10k-labels-idx1-ubyte"].unlink()
    monkeypatch.setattr(_downloads, "urlopen", offline)
    with pytest.raises(BasinscopeError, match="t10k-labels-idx1-ubyte.gz") as err:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "train-images" not in str(err.value)


# --------------------------------------------------------------------------- downloads


def serve_tiny_mnist(monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[FakeURLs, dict]:
    """Serve gzipped tiny IDX files by URL and make the checksum table expect them."""
    arrays = tiny_mnist(seed=5)
    files = {stem + ".gz": gzip.compress(idx_bytes(a), mtime=0) for stem, a in arrays.items()}
    for filename, raw in files.items():
        digest = hashlib.sha256(raw).hexdigest()
        monkeypatch.setitem(_downloads.CHECKSUMS[name], filename, {"sha256": digest})
    fake = FakeURLs(files)
    monkeypatch.setattr(_downloads, "urlopen", fake)
    return fake, files


@pytest.mark.parametrize(
    ("name", "mirror"),
    [
        ("mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        ("fashion-mnist", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    ],
)
def test_download_with_matching_hash_is_cached_and_loaded(cache, monkeypatch, name, mirror):
    fake, files = serve_tiny_mnist(monkeypatch, name)
    b = load_dataset(name, standardize=False)
    assert_matches_tiny_mnist(b, tiny_mnist(seed=5))
    assert sorted(fake.requested) == sorted(mirror + f for f in files)
    cached = cache / name
    assert sorted(os.listdir(cached)) == sorted(files)  # no temporary files left
    for filename, raw in files.items():
        assert (cached / filename).read_bytes() == raw
    # A second load reads the cache and never touches the network.
    monkeypatch.setattr(_downloads, "urlopen", offline)
    assert torch.equal(load_dataset(name, standardize=False).x_test, b.x_test)


def test_download_with_wrong_hash_raises_and_leaves_nothing(cache, monkeypatch):
    _, files = serve_tiny_mnist(monkeypatch, "mnist")
    wrong = "0" * 64
    monkeypatch.setitem(
        _downloads.CHECKSUMS["mnist"], "train-images-idx3-ubyte.gz", {"sha256": wrong}
    )
    actual = hashlib.sha256(files["train-images-idx3-ubyte.gz"]).hexdigest()
    with pytest.raises(BasinscopeError) as err:
        load_dataset("mnist")
    assert wrong in str(err.value) and actual in str(err.value)
    assert not (cache / "mnist").exists() or os.listdir(cache / "mnist") == []


def test_offline_download_names_files_and_cache_path(cache, monkeypatch):
    monkeypatch.setattr(_downloads, "urlopen", offline)
    with pytest.raises(BasinscopeError) as err:
        load_dataset("fashion-mnist")
    message = str(err.value)
    assert str(cache / "fashion-mnist") in message
    assert all(stem + ".gz" in message for stem in IDX_STEMS)
    assert "pass data_dir=DIR (CLI: --data-dir DIR)" in message  # the keyword first
    assert not (cache / "fashion-mnist").exists() or os.listdir(cache / "fashion-mnist") == []


def test_download_switched_off_does_not_touch_network(cache, monkeypatch):
    fake, _ = serve_tiny_mnist(monkeypatch, "mnist")
    with pytest.raises(BasinscopeError, match="downloading is switched off"):
        load_dataset("mnist", download=False)
    assert fake.requested == []


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BASINSCOPE_DATA", str(tmp_path))
    assert training.cache_dir("mnist") == tmp_path / "mnist"
    monkeypatch.delenv("BASINSCOPE_DATA")
    assert training.cache_dir("cifar10") == Path.home() / ".cache" / "basinscope" / "cifar10"


def test_checksum_table_is_complete():
    for name, stems in (("mnist", IDX_STEMS), ("fashion-mnist", IDX_STEMS)):
        assert set(_downloads.CHECKSUMS[name]) == {s + ".gz" for s in stems}
    for table in _downloads.CHECKSUMS.values():
        for digests in table.values():
            assert len(digests["sha256"]) == 64
    assert _downloads.CHECKSUMS["cifar10"]["cifar-10-python.tar.gz"]["md5"] == (
        "c58f30108f718f92721af3b95e74349a"
    )


# --------------------------------------------------------------------------- CIFAR-10


def cifar_batches(seed: int = 0) -> dict[str, dict[bytes, object]]:
    """Six tiny batches in the python-pickle layout (bytes keys, data [N, 3072] uint8)."""
    rng = np.random.default_rng(seed)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = 2 if name != "test_batch" else 3
        batches[name] = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [(i + j) % 10 for j in range(n)],
        }
    return batches


def write_cifar_tarball(path: Path, batches: dict[str, dict], skip: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, batch in batches.items():
            if name == skip:
                continue
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def assert_matches_cifar(b: DataBundle, batches: dict[str, dict]) -> None:
    assert b.x_train.shape == (10, 3, 32, 32) and b.x_test.shape == (3, 3, 32, 32)
    assert b.x_train.dtype == torch.float32 and b.n_classes == 10
    first = batches["data_batch_1"][b"data"][0]
    # Row-major CIFAR layout: 1024 red, then 1024 green, then 1024 blue values.
    assert round(b.x_train[0, 1, 0, 0].item() * 255) == first[1024]
    assert round(b.x_train[0, 2, 31, 31].item() * 255) == first[3071]
    expected = np.concatenate([batches[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    expected_t = torch.tensor(expected.reshape(10, 3, 32, 32), dtype=torch.float32) / 255
    torch.testing.assert_close(b.x_train, expected_t, rtol=0, atol=0)
    assert b.y_train.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert b.y_test.tolist() == [5, 6, 7]


def test_cifar10_from_tarball_in_data_dir(tmp_path, cache):
    batches = cifar_batches()
    write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", batches)
    assert_matches_cifar(load_dataset("cifar10", data_dir=tmp_path, standardize=False), batches)


def test_cifar10_from_extracted_directory(tmp_path, cache):
    batches = cifar_batches(seed=2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    assert_matches_cifar(load_dataset("cifar10", data_dir=tmp_path, standardize=False), batches)


def test_cifar10_download_checks_every_listed_digest(tmp_path, cache, monkeypatch):
    batches = cifar_batches(seed=3)
    raw = write_cifar_tarball(tmp_path / "served.tar.gz", batches)
    digests = {"sha256": hashlib.sha256(raw).hexdigest(), "md5": hashlib.md5(raw).hexdigest()}
    monkeypatch.setitem(_downloads.CHECKSUMS["cifar10"], "cifar-10-python.tar.gz", digests)
    fake = FakeURLs({"cifar-10-python.tar.gz": raw})
    monkeypatch.setattr(_downloads, "urlopen", fake)
    assert_matches_cifar(load_dataset("cifar10", standardize=False), batches)
    assert fake.requested == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert (cache / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == raw
    # A wrong md5 alone is enough to refuse the file.
    (cache / "cifar10" / "cifar-10-python.tar.gz").unlink()
    monkeypatch.setitem(
        _downloads.CHECKSUMS["cifar10"], "cifar-10-python.tar.gz", {**digests, "md5": "f" * 32}
    )
    with pytest.raises(BasinscopeError, match="md5"):
        load_dataset("cifar10")
    assert os.listdir(cache / "cifar10") == []


def test_cifar10_missing_batch_and_foreign_pickle_raise(tmp_path):
    batches = cifar_batches()
    write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", batches, skip="data_batch_3")
    with pytest.raises(BasinscopeError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)

    class Exploit:
        def __reduce__(self):
            return (os.getcwd, ())

    batches["test_batch"] = {b"data": Exploit(), b"labels": [0]}  # type: ignore[dict-item]
    write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", batches)
    with pytest.raises(BasinscopeError, match="test_batch"):
        load_dataset("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------- npz files


def test_npz_round_trip(tmp_path: Path):
    x_tr = np.arange(24, dtype=np.float64).reshape(4, 2, 3)
    x_te = -np.arange(12, dtype=np.float64).reshape(2, 2, 3)
    path = write_npz(
        tmp_path / "mine.npz",
        x_train=x_tr,
        y_train=np.array([0, 4, 2, 0], dtype=np.int32),
        x_test=x_te,
        y_test=np.array([1, 6], dtype=np.uint8),
    )
    b = load_dataset(str(path), standardize=False)
    assert b.name == str(path) and b.n_classes == 7 and b.input_shape == (2, 3)
    assert b.x_train.dtype == torch.float32 and b.y_test.dtype == torch.int64
    assert torch.equal(b.x_train, torch.tensor(x_tr, dtype=torch.float32))
    assert torch.equal(b.x_test, torch.tensor(x_te, dtype=torch.float32))
    assert b.y_train.tolist() == [0, 4, 2, 0] and b.y_test.tolist() == [1, 6]


def test_npz_missing_array_raises(tmp_path: Path):
    path = write_npz(tmp_path / "m.npz", x_train=np.zeros((3, 2)), y_train=np.zeros(3, np.int64))
    with pytest.raises(BasinscopeError) as err:
        load_dataset(str(path))
    assert str(path) in str(err.value) and "x_test, y_test" in str(err.value)


def test_npz_length_mismatch_raises(tmp_path: Path):
    path = write_npz(
        tmp_path / "l.npz",
        x_train=np.zeros((3, 2)),
        y_train=np.zeros(4, np.int64),
        x_test=np.zeros((1, 2)),
        y_test=np.zeros(1, np.int64),
    )
    with pytest.raises(BasinscopeError, match=r"x_train of shape \(3, 2\) and y_train"):
        load_dataset(str(path))


@pytest.mark.parametrize(
    ("y_train", "match"),
    [(np.array([0.0, 1.0]), "integers"), (np.array([0, -1]), "label -1")],
)
def test_npz_bad_labels_raise(tmp_path: Path, y_train: np.ndarray, match: str):
    path = write_npz(
        tmp_path / "y.npz",
        x_train=np.zeros((2, 2)),
        y_train=y_train,
        x_test=np.zeros((1, 2)),
        y_test=np.zeros(1, np.int64),
    )
    with pytest.raises(BasinscopeError, match=match):
        load_dataset(str(path))


def test_npz_missing_or_corrupt_file_raises(tmp_path: Path):
    with pytest.raises(BasinscopeError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.npz"))
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip")
    with pytest.raises(BasinscopeError, match="junk.npz"):
        load_dataset(str(tmp_path / "junk.npz"))


# --------------------------------------------------------------------------- registry


def test_unknown_name_lists_choices():
    with pytest.raises(BasinscopeError) as err:
        load_dataset("foo")
    assert str(err.value) == (
        "unknown dataset 'foo'; choose one of digits, mnist1d, mnist, fashion-mnist, cifar10, "
        "modular-add, modular-sub, modular-mul, modular-div, markov-lm "
        "or a path to an .npz file with x_train, y_train, x_test, y_test"
    )
    assert isinstance(err.value, ValueError)


def test_registry_names():
    assert training.dataset_names() == (
        "digits",
        "mnist1d",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "modular-add",
        "modular-sub",
        "modular-mul",
        "modular-div",
        "markov-lm",
    )
    assert set(training.DATASETS) == set(training.dataset_names())


def test_poison_labels_flips_exactly_the_fraction_to_wrong_classes():
    from basinscope.training import load_dataset, poison_labels

    clean = load_dataset("digits", standardize=False)
    bad = poison_labels(clean, 0.2, seed=3)
    changed = bad.y_train != clean.y_train
    assert int(changed.sum()) == round(0.2 * len(clean.y_train))
    assert torch.equal(bad.y_test, clean.y_test) and torch.equal(bad.x_train, clean.x_train)
    more = poison_labels(clean, 0.4, seed=3)
    assert bool(((more.y_train != clean.y_train) | ~changed).all())  # nested: 20% ⊂ 40%
    via_loader = load_dataset("digits", standardize=False, label_noise=0.2, seed=3)
    assert torch.equal(via_loader.y_train, bad.y_train)
    with pytest.raises(BasinscopeError, match="label_noise"):
        poison_labels(clean, 1.0)
