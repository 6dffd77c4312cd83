"""Remote dataset files: mirrors, published checksums, the cache directory, verified downloads.

A download is written to a temporary file and renamed into place only after its
checksum matches :data:`CHECKSUMS`; with ``data_dir`` given, nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.request import urlopen

from .._io import atomic_write
from ..errors import BasinscopeError

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
            f"{name} needs {listed} (gzipped or not) in data_dir {data_dir}, which lacks them; "
            "put them there or leave data_dir unset (CLI: --data-dir) to download them into "
            f"{cache_dir(name)}"
        )
    if not download:
        raise BasinscopeError(
            f"{name} needs {listed} in {directory} and downloading is switched off; "
            "put the files there or pass data_dir=DIR (CLI: --data-dir DIR)"
        )
    for i, filename in enumerate(missing):
        try:
            _download(name, filename, directory)
        except OSError as err:  # URLError and HTTPError are OSErrors too
            reason = getattr(err, "reason", err)
            raise BasinscopeError(
                f"could not download {', '.join(missing[i:])} for {name} ({reason}); put the "
                f"files in {directory} or pass data_dir=DIR (CLI: --data-dir DIR)"
            ) from err
    return {key: found[key] or directory / names[0] for key, names in wanted.items()}
