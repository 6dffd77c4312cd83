"""One writer per output: a lock file that names its holder.

Two commands that write the same output (a run directory, a surface file, a
study) would interleave their files: ``config.json`` of one run beside
``model.pt`` of the other, or two HDF5 writers. :func:`output_lock` takes an
exclusive ``fcntl.flock`` on ``<output>.lock`` (for a directory,
``<dir>/.basinscope.lock``) and writes the holder (pid, host, command, start
time) into it. The kernel releases the lock when the holder dies, so a killed
command never leaves a stale lock; a second command stops at once with one
sentence naming the holder, or waits for it with ``wait=True``.

Locks are re-entrant within a process (a study holds its directory while a run
inside it takes its own), keyed by the resolved path.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import BasinscopeError

try:  # POSIX; on other systems the lock is a no-op (documented in the README)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth)


def lock_path(output: str | Path, *, is_dir: bool | None = None) -> Path:
    """The lock file of ``output``: ``<dir>/.basinscope.lock`` or ``<file>.lock``.

    ``is_dir`` says which ``output`` is; by default an existing directory or a name
    without a suffix is a directory (pass it for a directory not created yet whose
    name has a dot, such as ``runs/a.v2``).
    """
    output = Path(output)
    if is_dir is None:
        is_dir = output.is_dir() or not output.suffix
    if is_dir:
        return output / ".basinscope.lock"
    return output.with_name(output.name + ".lock")


def _holder() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _describe(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"process {h['pid']} on {h['host']} ({h['command']}, since {h['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def output_lock(
    output: str | Path,
    what: str = "output",
    *,
    wait: bool = False,
    poll: float = 0.5,
    is_dir: bool | None = None,
) -> Iterator[Path]:
    """Hold the exclusive lock of ``output`` for the duration of the block.

    Args:
        output: the file or directory a computation writes.
        what: how the output is named in the refusal ("the run directory").
        wait: wait for the holder to finish instead of refusing.
        poll: seconds between attempts while waiting.
        is_dir: whether ``output`` is a directory (see :func:`lock_path`).

    Raises:
        BasinscopeError: another process holds the lock (and ``wait`` is false).
    """
    path = lock_path(output, is_dir=is_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield path
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    fd = _acquire(path, output, what, wait, poll)
    try:
        os.write(fd, (json.dumps(_holder()) + "\n").encode())
        _HELD[key] = (fd, 1)
        try:
            yield path
        finally:
            del _HELD[key]
            # Unlink before closing: a waiter that opened this file finds it gone
            # after its flock succeeds and opens the new one (see _acquire).
            with contextlib.suppress(OSError):
                os.unlink(path)
    finally:
        os.close(fd)  # closing releases the flock


def _acquire(path: Path, output: str | Path, what: str, wait: bool, poll: float) -> int:
    """Open and flock ``path``; retry when the file was unlinked by its last holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:  # pragma: no cover - Windows
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not wait:
                raise BasinscopeError(
                    f"{what} {str(output)!r} is being written by {_describe(path)}; "
                    "wait for it to finish or write somewhere else"
                ) from None
            time.sleep(poll)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)
