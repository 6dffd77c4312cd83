"""The caches of a study: every stored number is keyed by what decided it.

A measurement written by a study (``sharpness.json``, ``hessian.json``,
``volume.json``, ``suite.json``, ``surface.h5`` ...) records its settings: the
weights (:func:`model_fingerprint`), the objective (:func:`objective_key`: data
after the subset, loss, parameter space, device, dtype), the evaluation data
and every measure setting. :func:`_cached_json` reuses a file only while they
match, and :func:`own_file` replaces a surface file the study wrote for other
weights or settings. A killed or truncated file is simply recomputed.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_json
from .._keys import SOFT, normalise, warn_soft
from .._keys import environment as _environment
from ..errors import BasinscopeError
from ..landscape import Surface
from ..objective import Objective


def objective_key(obj: Objective) -> dict[str, Any]:
    """The parts of ``obj.fingerprint()`` that decide a cached number (weights, space,
    data after the subset, loss, device, dtype); the torch version and thread count
    only change rounding and are recorded beside it (:func:`_env`)."""
    return {k: v for k, v in obj.fingerprint().items() if k not in SOFT}


def _env(obj: Objective) -> dict[str, Any]:
    return _environment(obj.device, obj.dtype)


def model_fingerprint(*models: nn.Module) -> str:
    """SHA-256 of the models' state dicts (names, shapes, dtypes and values): the cache
    key that ties a stored measurement to the weights it was measured on."""
    h = hashlib.sha256()
    for model in models:
        for name, t in model.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def study_key(*parts: Any) -> str:
    """A short key for a computed file: the hash of ``parts`` (JSON)."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def own_file(path: Path, key: str) -> dict[str, str]:
    """Delete a surface file a study wrote for other weights, data or settings (a
    retrained run, a new grid), or one that cannot be read, so it is computed afresh; a
    file with the same key is resumed. Returns the attrs that record the key in the
    new file. The surface's own key (see :mod:`basinscope.landscape`) still guards the
    resume; this one only decides that the study, which owns the file, replaces it."""
    if path.exists():
        try:
            old = Surface.load(path).attrs.get("study_key")
        except BasinscopeError:
            old = None
        if old != key:
            path.unlink()
    return {"study_key": key}


def partial_beside(path: Path, settings: dict[str, Any]) -> Path:
    """Where the partial results (:mod:`basinscope._partial`) of the computation cached in
    ``path`` with ``settings`` live while it runs: ``<path>.<key of settings>.partial``, so
    an interrupted study resumes it. The study owns these files: one beside ``path`` for
    other settings (a changed threshold, retrained weights) is deleted, never refused."""
    mine = path.with_name(f"{path.name}.{study_key(normalise(settings))}.partial")
    for old in path.parent.glob(f"{glob.escape(path.name)}.*.partial"):
        if old != mine:
            old.unlink(missing_ok=True)
    return mine


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when it is missing, truncated or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _cached_json(
    path: Path,
    settings: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
    environment: dict[str, Any] | None = None,
    partial: Path | None = None,
) -> dict[str, Any]:
    """``compute()`` stored in ``path`` with its ``settings`` and ``environment``.

    Reused while ``settings`` (everything that decides the numbers: weights, data,
    loss, every measure setting, device and dtype) match; a file that is missing,
    truncated, unreadable or of other settings is recomputed and replaced
    atomically. A result computed under another torch version or thread count is
    reused with a warning (its last bits may differ from a fresh one). ``partial``,
    the file ``compute`` keeps its finished work items in (:func:`partial_beside`), is
    deleted once the result is stored.
    """
    settings = normalise(settings)
    saved = _read_json(path) if path.exists() else None
    if saved is not None and saved.get("settings") == settings:
        if environment is not None:
            then = saved.get("environment") or {}
            soft = [k for k in ("torch_version", "threads") if then.get(k) != environment.get(k)]
            warn_soft(path, soft, then, environment)
        return saved
    result = {**compute(), "settings": settings}
    if environment is not None:
        result["environment"] = environment
    atomic_write_json(path, result)
    if partial is not None:
        partial.unlink(missing_ok=True)
    return json.loads(json.dumps(result, default=str))
