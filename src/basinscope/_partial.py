"""Partial results of a computation over many independent work items.

A basin volume is a mean over rays, an average-case sharpness a mean over noise
samples, a Hutchinson trace a mean over probes: each item's randomness comes
from ``(seed, index)`` alone (:mod:`basinscope._rng`), so an item computed
today is the item an uninterrupted run would compute. :func:`open_partial`
keeps the finished items in one JSON file, rewritten atomically after each
batch, and a rerun computes only the missing ones; the assembled result is
then bit-identical to that of one uninterrupted run (same device, dtype,
thread count and torch version).

The file::

    {"format": "basinscope-partial", "version": 1, "what": "basin-volume rays",
     "key": {weights, space, data, loss, batch_size, torch_version, threads,
             device, dtype, ...settings},
     "items": {"0": <item>, "1": <item>, ...}}

``key`` is :meth:`Objective.fingerprint` plus every setting that changes an
item's value; item keys are strings (an index, or ``float.hex(σ)``). Settings
that only decide *how many* items or *how they are batched* are not in the key,
so a rerun with more rays or samples reuses the ones already computed.

* A key that differs in a hard component (weights, data, loss, a setting,
  device, dtype) is refused with one sentence naming what differs
  (:func:`basinscope._keys.check_key`); torch version, thread count and batch
  size only warn (:func:`basinscope._keys.warn_soft`), and the file keeps the
  key it was started with.
* A file that cannot be read as partial results (truncated, not JSON, another
  program's file) is refused with a sentence saying to delete it: it is never
  overwritten, since the path may name something that is not ours.
* The file is locked while the computation runs (:func:`basinscope._lock.output_lock`):
  a second process on the same path stops with one sentence.
* A finished computation keeps its file: a rerun then recomputes nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import _dist
from ._checks import check_output_file
from ._io import atomic_write_json
from ._keys import check_key, normalise, warn_soft
from ._lock import output_lock
from .errors import BasinscopeError

FORMAT = "basinscope-partial"
VERSION = 1
FRESH = "delete it to start afresh or pass another path"


class PartialResults:
    """Finished work items, keyed by ``str(index)``, and the file they live in.

    ``path=None`` keeps them in memory only (the same code path without a file).
    """

    def __init__(
        self,
        path: Path | None,
        key: Mapping[str, Any],
        what: str,
        items: dict[str, Any],
        dist: Any = None,
    ):
        self.path = path
        self.key = dict(key)
        self.what = what
        self.items = items
        self.dist = dist  # in a process group rank 0 writes, and a failure stops every rank

    def __contains__(self, index: object) -> bool:
        return str(index) in self.items

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: object) -> Any:
        """The stored result of item ``index`` (``KeyError`` when missing)."""
        return self.items[str(index)]

    def missing(self, indices: Iterable[object]) -> list:
        """The indices (in the order given) that have no stored result."""
        return [i for i in indices if str(i) not in self.items]

    def update(self, results: Mapping[object, Any]) -> None:
        """Add finished items and rewrite the file atomically (temp file + rename)."""
        self.items.update({str(k): v for k, v in results.items()})
        if self.path is not None:
            payload = {
                "format": FORMAT,
                "version": VERSION,
                "what": self.what,
                "key": self.key,
                "items": self.items,
            }
            _dist.agree(self.dist, lambda: atomic_write_json(self.path, payload))


def _unreadable(path: Path, what: str, why: str) -> BasinscopeError:
    return BasinscopeError(
        f"{str(path)!r} cannot be read as the partial {what} it should hold ({why}); {FRESH}"
    )


def _load(path: Path, key: Mapping[str, Any], what: str) -> tuple[dict, dict[str, Any]]:
    """The saved key and items of ``path`` after checking the key (``({}, {})`` if absent)."""
    if not path.exists():
        return {}, {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _unreadable(path, what, type(e).__name__) from None
    except ValueError:
        raise _unreadable(path, what, "truncated or not JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _unreadable(path, what, "not a basinscope partial-results file")
    items = data.get("items")
    saved = data.get("key")
    if not isinstance(items, dict) or not isinstance(saved, dict):
        raise _unreadable(path, what, "no key or items")
    if data.get("what") != what:
        raise BasinscopeError(
            f"{str(path)!r} holds partial {data.get('what')}, not {what}; {FRESH}"
        )
    wanted = normalise(key)
    soft = check_key(path, saved, wanted, what=f"partial {what}", fresh=FRESH)
    warn_soft(path, soft, saved, wanted)
    return saved, items


@contextlib.contextmanager
def open_partial(
    path: str | Path | None, key: Mapping[str, Any], *, what: str, dist: Any = None
) -> Iterator[PartialResults]:
    """The partial results of one computation, locked for the duration of the block.

    Args:
        path: the JSON file (created on the first :meth:`PartialResults.update`),
            or ``None`` to keep nothing.
        key: everything an item's value depends on (JSON scalars).
        what: what the items are ("basin-volume rays"); a file of another kind
            is refused.
        dist: the process group (:class:`basinscope._dist.Dist`, an Objective's
            ``dist``): rank 0 alone locks, reads and writes the file, and every rank
            gets its items; every rank must then make the same updates.

    Raises:
        BasinscopeError: the file cannot be written, is unreadable, holds
            another computation's items, or is being written by another process.
    """
    if path is None:
        yield PartialResults(None, normalise(key), what, {})
        return
    path = check_output_file(path, f"the partial-results file for the {what}")
    with contextlib.ExitStack() as stack:

        def begin() -> tuple[dict, dict[str, Any]]:
            stack.enter_context(output_lock(path, what=f"the partial-results file for the {what}"))
            return _load(path, key, what)

        saved, items = _dist.agree(dist, begin)
        yield PartialResults(path, saved or normalise(key), what, items, dist)
