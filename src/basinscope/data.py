"""Datasets: built-in offline data, downloadable IDX/CIFAR files, and user .npz files.

:func:`load_dataset` returns a :class:`DataBundle` of float32 inputs and int64
labels for one of the registered datasets (:data:`DATASETS`) or a user's
``.npz`` file. Every loader returns the full, raw dataset; the options that
shape an experiment (a seeded, nested subset of the training set and per-channel
standardisation) are applied afterwards by shared code, so they mean the same
thing for every dataset.

Where the data comes from:

* ``digits`` (sklearn's bundled 8x8 digits) and ``mnist1d`` (generated locally
  by ``mnist1d.data.make_dataset``) need no files and no network.
* ``mnist``, ``fashion-mnist`` (four IDX files each) and ``cifar10`` (the
  python-pickle tarball) are read from ``data_dir`` when one is given, else
  from the cache directory :func:`cache_dir` (``$BASINSCOPE_DATA/<name>``,
  default ``~/.cache/basinscope/<name>``), downloading the missing files there
  when ``download=True``. A download is written to a temporary file and
  renamed into place only after its checksum matches :data:`CHECKSUMS`.

Nothing here touches global random state: subsets use their own
``torch.Generator``, and the global NumPy / ``random`` state that
``mnist1d`` reseeds is restored afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib
import io
import numbers
import os
import pickle
import random
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import torch

from ._checks import check_int
from ._io import atomic_write
from .errors import BasinscopeError


@dataclass(frozen=True)
class DataBundle:
    """A classification dataset held as tensors.

    Attributes:
        name: registry name (``digits``, ``mnist1d``, ...) or the .npz path.
        x_train: float32 ``[N, *input_shape]``.
        y_train: int64 ``[N]`` class indices in ``[0, n_classes)``.
        x_test, y_test: the same for the test split.
        n_classes: number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


# --------------------------------------------------------------------------- #
# Remote files: mirrors and checksums
# --------------------------------------------------------------------------- #

_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_TARBALL = "cifar-10-python.tar.gz"
_CIFAR10_DIR = "cifar-10-batches-py"

#: Base URLs tried in order for each downloadable dataset.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

#: dataset -> file name -> {hashlib algorithm: expected hex digest}. A download
#: must match every digest listed for its file. The values are the published
#: ones, as listed identically by torchvision, Keras and tensorflow-datasets;
#: CIFAR-10 also carries the md5 its authors publish.
CHECKSUMS: dict[str, dict[str, dict[str, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": {
            "sha256": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        },
        "train-labels-idx1-ubyte.gz": {
            "sha256": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        },
        "t10k-images-idx3-ubyte.gz": {
            "sha256": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        },
        "t10k-labels-idx1-ubyte.gz": {
            "sha256": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        },
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": {
            "sha256": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
        },
        "train-labels-idx1-ubyte.gz": {
            "sha256": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
        },
        "t10k-images-idx3-ubyte.gz": {
            "sha256": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
        },
        "t10k-labels-idx1-ubyte.gz": {
            "sha256": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
        },
    },
    "cifar10": {
        _CIFAR10_TARBALL: {
            "sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            "md5": "c58f30108f718f92721af3b95e74349a",
        },
    },
}

_DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def cache_dir(name: str) -> Path:
    """The directory where dataset ``name`` is looked for and downloaded to.

    ``$BASINSCOPE_DATA/<name>`` if that environment variable is set, else
    ``~/.cache/basinscope/<name>``. Each dataset has its own directory because
    MNIST and Fashion-MNIST use the same file names.
    """
    root = os.environ.get("BASINSCOPE_DATA")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "basinscope"
    return base / name


def _download(name: str, filename: str, dest_dir: Path) -> Path:
    """Fetch ``filename`` of dataset ``name`` into ``dest_dir``, verifying its checksums.

    Tries each mirror in turn; raises the last :class:`OSError` (``URLError``
    included) if none answers. The bytes go to a temporary file that is
    renamed to ``dest_dir/filename`` only when every digest matches, so a
    failed or corrupt download never leaves a file behind.
    """
    expected = CHECKSUMS[name][filename]
    if not expected:
        raise RuntimeError(f"no checksum is recorded for {name}/{filename}")
    last_error: OSError | None = None
    for base in MIRRORS[name]:
        url = base + filename

        def fetch(tmp: Path, url: str = url) -> None:
            hashers = {algo: hashlib.new(algo) for algo in expected}
            with urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
            for algo, want in expected.items():
                got = hashers[algo].hexdigest()
                if got != want.lower():
                    raise BasinscopeError(
                        f"the file downloaded from {url} has {algo} {got} but {want} was "
                        "expected, so it was not saved; retry later or place a good copy "
                        f"in {dest_dir}"
                    )

        try:
            return atomic_write(dest_dir / filename, fetch)
        except OSError as err:  # URLError, HTTPError, timeouts, resets: try the next mirror
            last_error = err
    assert last_error is not None
    raise last_error


def _find(directory: Path, candidates: tuple[str, ...]) -> Path | None:
    """The first of ``candidates`` that exists in ``directory``, or None."""
    for candidate in candidates:
        path = directory / candidate
        if path.exists():
            return path
    return None


def _locate(
    name: str,
    wanted: dict[str, tuple[str, ...]],
    data_dir: Path | None,
    download: bool,
) -> dict[str, Path]:
    """Find the files a dataset needs, downloading missing ones into the cache.

    ``wanted`` maps a key to the names the file may have on disk, the first one
    being the downloadable name (e.g. ``("x.gz", "x")``). With ``data_dir``
    given, only that directory is searched and nothing is downloaded.
    """
    directory = data_dir if data_dir is not None else cache_dir(name)
    found = {key: _find(directory, names) for key, names in wanted.items()}
    missing = [wanted[key][0] for key, path in found.items() if path is None]
    if not missing:
        return {key: path for key, path in found.items() if path is not None}
    listed = ", ".join(missing)
    if data_dir is not None:
        raise BasinscopeError(
            f"{name} needs {listed} (gzipped or not) in --data-dir {data_dir}, which lacks them; "
            f"put them there or leave --data-dir out to download them into {cache_dir(name)}"
        )
    if not download:
        raise BasinscopeError(
            f"{name} needs {listed} in {directory} and downloading is switched off; "
            "put the files there or pass --data-dir DIR"
        )
    for i, filename in enumerate(missing):
        try:
            _download(name, filename, directory)
        except OSError as err:  # URLError and HTTPError are OSErrors too
            reason = getattr(err, "reason", err)
            raise BasinscopeError(
                f"could not download {', '.join(missing[i:])} for {name} ({reason}); put the "
                f"files in {directory} or pass --data-dir DIR"
            ) from err
    return {key: found[key] or directory / names[0] for key, names in wanted.items()}


# --------------------------------------------------------------------------- #
# File formats
# --------------------------------------------------------------------------- #

# IDX type codes (http://yann.lecun.com/exdb/mnist/, bottom of the page); all big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic number."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise BasinscopeError(f"{path} is not a readable gzip file ({err})") from err


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a NumPy array.

    Layout: two zero bytes, a type code (``0x08`` unsigned byte, ``0x09``
    signed byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E``
    float64), the number of dimensions ``d``, then ``d`` big-endian uint32
    sizes, then the values in C order.

    Returns:
        An array of shape ``[size_0, ..., size_{d-1}]`` in native byte order.

    Raises:
        BasinscopeError: the file is too short, has a bad magic number or type
        code, or holds a different number of values than its header says.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise BasinscopeError(
            f"{path} is not an IDX file: it must start with two zero bytes, a type code and "
            f"the number of dimensions, but starts with {data[:4].hex() or 'nothing'}"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        accepted = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise BasinscopeError(
            f"{path} has IDX type code 0x{code:02x}; accepted codes are {accepted}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise BasinscopeError(f"{path} is truncated inside its IDX header of {ndim} dimensions")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise BasinscopeError(
            f"{path} should hold {expected} bytes of data for shape {shape} but holds "
            f"{len(data) - header}"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only NumPy arrays and plain Python containers.

    The CIFAR batches are pickles; refusing every other global means a
    tampered tarball cannot run code when it is read. The allowed names are
    what NumPy arrays pickle to under protocols 2 to 5 (``_codecs.encode``
    carries bytes under protocol 2).
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        if module.startswith(("numpy.core.", "numpy._core.")):
            # NumPy 2 renamed numpy.core to numpy._core; old pickles name the former.
            suffix = module.split(".", 2)[2]
            for candidate in (f"numpy._core.{suffix}", f"numpy.core.{suffix}"):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        return getattr(importlib.import_module(module), name)


def _cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 python batch into ``x`` uint8 ``[N,3,32,32]`` and ``y`` ``[N]``."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch.get(b"data", batch.get("data")), dtype=np.uint8)
        labels = np.asarray(batch.get(b"labels", batch.get("labels")), dtype=np.int64)
        x = data.reshape(len(data), 3, 32, 32)
    except Exception as err:
        raise BasinscopeError(
            f"{where} is not a CIFAR-10 python batch with 'data' [N, 3072] and 'labels' ({err})"
        ) from err
    if labels.shape != (len(x),):
        raise BasinscopeError(f"{where} has {len(x)} images but {labels.size} labels")
    return x, labels


_CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _read_cifar10(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The six CIFAR-10 batches from the tarball or an extracted directory, by name."""
    if path.is_dir():
        members = {
            b: (path / b).read_bytes() if (path / b).exists() else None for b in _CIFAR10_BATCHES
        }
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                names = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                members = {}
                for b in _CIFAR10_BATCHES:
                    member = names.get(b)
                    handle = tar.extractfile(member) if member is not None else None
                    members[b] = handle.read() if handle is not None else None
        except tarfile.TarError as err:
            raise BasinscopeError(f"{path} is not a readable tar archive ({err})") from err
    absent = [b for b, raw in members.items() if raw is None]
    if absent:
        raise BasinscopeError(f"{path} lacks the CIFAR-10 batches {', '.join(absent)}")
    return {b: _cifar_batch(raw, f"{path}:{b}") for b, raw in members.items() if raw is not None}


# --------------------------------------------------------------------------- #
# Loaders: each returns the full, raw dataset
# --------------------------------------------------------------------------- #


def _bundle(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
) -> DataBundle:
    """Copy NumPy arrays into a :class:`DataBundle` of float32 / int64 tensors."""
    return DataBundle(
        name=name,
        x_train=torch.tensor(np.asarray(x_train, dtype=np.float32)),
        y_train=torch.tensor(np.asarray(y_train, dtype=np.int64)),
        x_test=torch.tensor(np.asarray(x_test, dtype=np.float32)),
        y_test=torch.tensor(np.asarray(y_test, dtype=np.int64)),
        n_classes=n_classes,
    )


def _load_digits(data_dir: Path | None, download: bool) -> DataBundle:
    """sklearn's bundled 8x8 digits, ``[N,1,8,8]`` in [0, 1], a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).reshape(-1, 1, 8, 8)
    # random_state is fixed, not the user's seed: the test set must never change.
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return _bundle("digits", x_tr, y_tr, x_te, y_te, n_classes=10)


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D generated by its own code with its default arguments (seed 42)."""
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global NumPy and `random` generators; put them back.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = (d["x"][:, None, :], d["y"], d["x_test"][:, None, :], d["y_test"])
    for a in arrays:
        a.setflags(write=False)  # the cache is shared; callers get copies
    return arrays


def _load_mnist1d(data_dir: Path | None, download: bool) -> DataBundle:
    """MNIST-1D (Greydanus 2020), ``[N,1,40]``, its own 4000/1000 split, generated offline."""
    x_tr, y_tr, x_te, y_te = _mnist1d_arrays()
    return _bundle("mnist1d", x_tr, y_tr, x_te, y_te, n_classes=10)


def _load_idx_dataset(name: str, data_dir: Path | None, download: bool) -> DataBundle:
    """MNIST-format data from its four IDX files, ``[N,1,28,28]`` in [0, 1]."""
    wanted = {stem: (stem + ".gz", stem) for stem in _IDX_STEMS}
    paths = _locate(name, wanted, data_dir, download)
    splits = []
    for split in ("train", "t10k"):
        img_path, lbl_path = (
            paths[f"{split}-images-idx3-ubyte"],
            paths[f"{split}-labels-idx1-ubyte"],
        )
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3:
            raise BasinscopeError(
                f"{img_path} holds an array of shape {images.shape}, not images [N, rows, cols]"
            )
        if labels.shape != (len(images),):
            raise BasinscopeError(
                f"{lbl_path} holds labels of shape {labels.shape} but {img_path} holds "
                f"{len(images)} images"
            )
        splits += [images[:, None].astype(np.float32) / 255.0, labels]
    return _bundle(name, *splits, n_classes=10)


def _load_cifar10(data_dir: Path | None, download: bool) -> DataBundle:
    """CIFAR-10 from the python tarball (or its extracted directory), ``[N,3,32,32]`` in [0, 1]."""
    paths = _locate("cifar10", {"cifar": (_CIFAR10_TARBALL, _CIFAR10_DIR)}, data_dir, download)
    batches = _read_cifar10(paths["cifar"])
    train = [batches[b] for b in _CIFAR10_BATCHES[:-1]]
    x_tr = np.concatenate([x for x, _ in train]).astype(np.float32) / 255.0
    y_tr = np.concatenate([y for _, y in train])
    x_te, y_te = batches["test_batch"]
    return _bundle("cifar10", x_tr, y_tr, x_te.astype(np.float32) / 255.0, y_te, n_classes=10)


_NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _load_npz(path: Path) -> DataBundle:
    """A user's ``.npz`` with ``x_train [N, ...], y_train [N], x_test [M, ...], y_test [M]``.

    Labels must be integers >= 0; ``n_classes`` is the largest label + 1.
    Inputs of shape ``[N]`` become ``[N, 1]``.
    """
    if not path.is_file():
        raise BasinscopeError(f"dataset file {path} does not exist or is not a file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _NPZ_ARRAYS if k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise BasinscopeError(f"{path} is not a readable .npz file ({err})") from err
    missing = [k for k in _NPZ_ARRAYS if k not in arrays]
    if missing:
        raise BasinscopeError(
            f"{path} lacks the arrays {', '.join(missing)}; an .npz dataset needs "
            f"{', '.join(_NPZ_ARRAYS)}"
        )

    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 0 or y.ndim != 1 or len(x) != len(y):
            raise BasinscopeError(
                f"{path} has x_{split} of shape {x.shape} and y_{split} of shape {y.shape}; "
                f"they need the same length N, with y_{split} of shape [N]"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise BasinscopeError(
                f"{path} has y_{split} of dtype {y.dtype}; labels must be integers >= 0 "
                f"(y_{split}.astype(np.int64) if they are whole numbers)"
            )
        if y.size and y.min() < 0:
            raise BasinscopeError(f"{path} has y_{split} with label {y.min()}; labels must be >= 0")
        if np.issubdtype(x.dtype, np.complexfloating) or not (
            np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_
        ):
            raise BasinscopeError(
                f"{path} has x_{split} of dtype {x.dtype}; inputs must be real numbers"
            )
        if x.ndim > 1 and 0 in x.shape[1:]:
            raise BasinscopeError(
                f"{path} has x_{split} of shape {x.shape}, examples with no values; give "
                "at least one feature per example"
            )
        _check_finite_array(path, f"x_{split}", x)
        if x.ndim == 1:
            arrays[f"x_{split}"] = x[:, None]
    for split, what in (("train", "training"), ("test", "test")):
        if len(arrays[f"y_{split}"]) == 0:
            raise BasinscopeError(
                f"{path} has an empty {what} split (x_{split} holds no examples); give at least one"
            )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise BasinscopeError(
            f"{path} has x_train examples of shape {arrays['x_train'].shape[1:]} but x_test "
            f"examples of shape {arrays['x_test'].shape[1:]}; they must match"
        )
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
    return _bundle(str(path), *(arrays[k] for k in _NPZ_ARRAYS), n_classes=int(labels.max()) + 1)


def _check_finite_array(path: Path, name: str, x: np.ndarray) -> None:
    """Refuse NaN/inf in an input array, and values float32 (the bundle's dtype) cannot hold."""
    if not np.issubdtype(x.dtype, np.number) or x.size == 0:
        return
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            i = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
            kind = "NaN" if np.isnan(x[i]).any() else "inf"
            raise BasinscopeError(
                f"{path} has {name} holding {kind} (example {i}); inputs must be finite numbers"
            )
    biggest = float(np.abs(x).max())
    if biggest > float(np.finfo(np.float32).max):
        raise BasinscopeError(
            f"{path} has {name} holding {biggest:.3g}, beyond float32's range "
            f"({np.finfo(np.float32).max:.3g}); rescale the inputs"
        )


#: name -> loader ``(data_dir, download) -> DataBundle`` returning the full raw dataset.
DATASETS: dict[str, Callable[[Path | None, bool], DataBundle]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    "mnist": functools.partial(_load_idx_dataset, "mnist"),
    "fashion-mnist": functools.partial(_load_idx_dataset, "fashion-mnist"),
    "cifar10": _load_cifar10,
}


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names, in registry order."""
    return tuple(DATASETS)


# --------------------------------------------------------------------------- #
# Shared options: nested seeded subsets and standardisation
# --------------------------------------------------------------------------- #


def train_subset_indices(n_train: int, train_size: float | int | None, seed: int) -> torch.Tensor:
    """Indices of the training examples kept for ``train_size``, sorted ascending.

    The kept set is the first ``k`` entries of ``torch.randperm(n_train)`` under a
    generator seeded with ``seed``, so for one seed smaller subsets are contained
    in larger ones (10% ⊂ 30% ⊂ 100%). ``k`` is ``round(train_size * n_train)``
    for a float ``train_size`` in (0, 1], ``train_size`` itself for an int in
    ``[1, n_train]``, and ``n_train`` for None.

    Returns:
        int64 ``[k]``.
    """
    if train_size is None:
        return torch.arange(n_train)
    if isinstance(train_size, bool) or not isinstance(train_size, numbers.Real):
        raise BasinscopeError(
            f"train_size {train_size!r} is not a number; give a fraction in (0, 1] or a count "
            f"in [1, {n_train}]"
        )
    if isinstance(train_size, numbers.Integral):
        k = int(train_size)
        if not 1 <= k <= n_train:
            raise BasinscopeError(
                f"train_size {k} is outside [1, {n_train}], the size of the training set"
            )
    else:
        fraction = float(train_size)
        if not 0.0 < fraction <= 1.0:
            raise BasinscopeError(
                f"train_size {train_size!r} is not a fraction in (0, 1] or a count in "
                f"[1, {n_train}]"
            )
        k = round(fraction * n_train)
        if k < 1:
            raise BasinscopeError(
                f"train_size {train_size!r} keeps no example of the {n_train} training examples; "
                f"give at least {1 / n_train:.2g}"
            )
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_train, generator=generator)[:k].sort().values


def _standardize(bundle: DataBundle) -> DataBundle:
    """Shift and scale every channel (dim 1) to training mean 0 and std 1 on both splits."""
    x = bundle.x_train.double()
    dims = [d for d in range(x.ndim) if d != 1]
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean = x.mean(dim=dims).reshape(shape)
    std = x.std(dim=dims, correction=0).reshape(shape)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays constant

    def apply(t: torch.Tensor) -> torch.Tensor:
        return ((t.double() - mean) / std).float()

    return dataclasses.replace(bundle, x_train=apply(bundle.x_train), x_test=apply(bundle.x_test))


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    train_size: float | int | None = None,
    standardize: bool = True,
    seed: int = 0,
    download: bool = True,
    label_noise: float = 0.0,
) -> DataBundle:
    """Load a dataset by registry name or ``.npz`` path, subset, poison and standardise it.

    Args:
        name: one of :func:`dataset_names` or a path to an ``.npz`` file holding
            ``x_train, y_train, x_test, y_test``.
        data_dir: a directory holding the dataset's files (for ``mnist``,
            ``fashion-mnist``, ``cifar10``); searched instead of the cache and
            never downloaded into.
        train_size: keep a seeded random subset of the training set: a fraction
            in (0, 1] or a count in ``[1, N_train]``; None keeps it all. See
            :func:`train_subset_indices` (subsets are nested for one seed).
        standardize: subtract the training mean and divide by the training
            standard deviation per channel (dim 1), computed on the kept
            training examples and applied to both splits.
        seed: seed of the subset's permutation. The digits test split is fixed
            and does not depend on it.
        download: fetch missing files into :func:`cache_dir` when no
            ``data_dir`` is given.
        label_noise: mislabel this fraction of the (kept) training examples,
            see :func:`poison_labels`; the test set is never changed.

    Returns:
        A :class:`DataBundle`: float32 inputs ``[N, *input_shape]``, int64 labels.

    Raises:
        BasinscopeError: unknown name, bad file, missing files, bad ``train_size``.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise BasinscopeError(
            f"dataset name {name!r} is not valid; give one of {', '.join(DATASETS)} or a path "
            "to an .npz file"
        )
    seed = check_int("seed", seed)
    path = Path(name).expanduser()
    if name in DATASETS:
        directory = Path(data_dir).expanduser() if data_dir is not None else None
        bundle = DATASETS[name](directory, download)
    elif name.endswith(".npz") or path.exists():
        bundle = _load_npz(path)
    else:
        raise BasinscopeError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or a path to an "
            f".npz file with {', '.join(_NPZ_ARRAYS)}"
        )

    if train_size is not None:
        keep = train_subset_indices(len(bundle.y_train), train_size, seed)
        bundle = dataclasses.replace(
            bundle, x_train=bundle.x_train[keep], y_train=bundle.y_train[keep]
        )
    if label_noise:
        bundle = poison_labels(bundle, label_noise, seed)
    if standardize:
        bundle = _standardize(bundle)
    return bundle


def poison_labels(bundle: DataBundle, fraction: float, seed: int = 0) -> DataBundle:
    """Mislabel ``round(fraction · N)`` training examples (Huang et al. 2020).

    The examples are the first of a permutation seeded by ``seed`` (so a larger
    fraction poisons a superset), and each gets a label drawn uniformly from the
    *other* classes, so every poisoned label is wrong. Returns a new bundle.
    """
    if not (isinstance(fraction, numbers.Real) and 0.0 <= fraction < 1.0):
        raise BasinscopeError(f"label_noise {fraction!r} is not valid; give a fraction in [0, 1).")
    if fraction and bundle.n_classes < 2:
        raise BasinscopeError(
            f"label_noise {fraction!r} needs at least 2 classes to mislabel into; the data "
            f"has {bundle.n_classes}"
        )
    seed = check_int("seed", seed)
    n = len(bundle.y_train)
    k = int(round(fraction * n))
    if k == 0:
        return dataclasses.replace(bundle, y_train=bundle.y_train.clone())
    g = torch.Generator().manual_seed(int(seed) + 7919)  # apart from the subset's stream
    idx = torch.randperm(n, generator=g)[:k]
    shift = torch.randint(1, bundle.n_classes, (k,), generator=g)
    y = bundle.y_train.clone()
    y[idx] = (y[idx] + shift) % bundle.n_classes
    return dataclasses.replace(bundle, y_train=y)
