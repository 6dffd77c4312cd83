"""Dataset file formats: IDX (MNIST), CIFAR-10 python batches (a safe unpickler), user .npz."""

from __future__ import annotations

import gzip
import importlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import BasinscopeError
from ._bundle import DataBundle, _bundle

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
    n_classes = int(labels.max()) + 1
    _check_dense(path, labels, n_classes)
    return _bundle(str(path), *(arrays[k] for k in _NPZ_ARRAYS), n_classes=n_classes)


_SPARSE_FROM = 1024  # below this many classes an absent class costs nothing worth refusing


def _check_dense(path: Path, labels: np.ndarray, n_classes: int) -> None:
    """Refuse sparse labels: over ``_SPARSE_FROM`` classes with fewer than half of them used.

    ``n_classes`` is the largest label + 1, and the model gets one output per
    class: labels such as ``{0, 10**9}`` would ask for 10**9 outputs, almost all
    of them for classes that never occur.
    """
    if n_classes <= _SPARSE_FROM:
        return
    distinct = int(np.unique(labels).size)
    if 2 * distinct < n_classes:
        raise BasinscopeError(
            f"{path} has labels up to {n_classes - 1} but only {distinct} distinct ones, so "
            f"n_classes would be {n_classes}; relabel the classes 0..{distinct - 1} "
            "(np.unique(y, return_inverse=True))"
        )


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
