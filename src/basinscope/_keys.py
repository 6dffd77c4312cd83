"""Keys for resumable results: what determines a file's numbers, and what differs.

A resumable file (a surface, a path, a volume, a study cache) is only resumed or
reused when it was computed from the same things: the weights, the evaluation
data and its subset, the loss, every setting, and the environment that decides
the floating-point arithmetic (torch version, thread count, device, dtype). A
*key* is a flat ``{component: value}`` mapping of JSON scalars (hashes for
tensors); two keys are compared component by component so that a refusal can
say *what* differs instead of just "something".

* :func:`tensor_digest` hashes tensors (dtype, shape, bytes).
* :func:`environment` is the arithmetic's environment.
* :func:`differences` lists the components that differ between two keys.
* :func:`check_key` raises one sentence naming them, and how to start afresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import BasinscopeError

# Components that change the last bits of a result (summation order, kernels) but
# not its meaning: a resume under another value warns (the README says what stays bit-reproducible), where
# every other difference refuses.
SOFT = ("torch_version", "threads", "batch_size")


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """A short SHA-256 of the tensors' dtypes, shapes and bytes (``None`` counts too)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def value_digest(value: Any) -> str:
    """A short SHA-256 of a JSON-able value (settings, nested lists)."""
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def environment(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> dict:
    """The environment that decides the arithmetic: torch version, threads, device, dtype."""
    env: dict[str, Any] = {
        "torch_version": str(torch.__version__),  # TorchVersion does not unpickle safely
        "threads": torch.get_num_threads(),
    }
    if device is not None:
        env["device"] = str(torch.device(device))
    if dtype is not None:
        env["dtype"] = str(dtype).removeprefix("torch.")
    return env


def normalise(key: Mapping[str, Any]) -> dict[str, Any]:
    """``key`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(dict(key), sort_keys=True, default=repr))


def differences(saved: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """The components of ``wanted`` whose value in ``saved`` differs (or is missing)."""
    saved = normalise(saved or {})
    wanted = normalise(wanted)
    names = sorted(set(saved) | set(wanted))
    return [k for k in names if saved.get(k) != wanted.get(k)]


def _phrase(names: Iterable[str]) -> str:
    names = [n.replace("_", " ") for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def check_key(
    path: str | Path,
    saved: Mapping[str, Any] | None,
    wanted: Mapping[str, Any],
    *,
    what: str = "results",
    fresh: str = "delete it or write to another path",
) -> list[str]:
    """Refuse to resume ``path`` unless ``saved`` matches ``wanted``.

    Hard components (weights, data, loss, settings, device, dtype) must be equal:
    otherwise :class:`BasinscopeError` says which differ and ``fresh`` (how to
    start afresh). The soft components (:data:`SOFT`: torch version and thread
    count) only change rounding; they are returned so the caller can warn.

    Returns:
        The soft components that differ (empty when everything matches).
    """
    diff = differences(saved, wanted)
    hard = [k for k in diff if k not in SOFT]
    if not saved or hard:
        because = (
            "with no record of what it was computed from"
            if not saved
            else f"of another computation (different {_phrase(hard)})"
        )
        raise BasinscopeError(f"{str(path)!r} holds {what} {because}; {fresh}")
    return [k for k in diff if k in SOFT]


def warn_soft(path: str | Path, soft: list[str], saved: Mapping[str, Any], wanted: Mapping) -> None:
    """Warn that a resume mixes results computed under another torch version or thread count."""
    if not soft:
        return
    import warnings

    saved, wanted = normalise(saved), normalise(wanted)
    detail = ", ".join(f"{k} {saved.get(k)} then, {wanted.get(k)} now" for k in soft)
    warnings.warn(
        f"resuming {str(path)!r} under another environment ({detail}): the points already "
        "computed may differ from a fresh run in the last bits",
        RuntimeWarning,
        stacklevel=3,
    )
