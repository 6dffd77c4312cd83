"""Processes working together: ``torch.distributed`` (launched by ``torchrun``).

An :class:`~basinscope.Objective` created inside an initialised process group
uses it (or the group given as ``group=``); every rank holds the whole model and
data and makes the same calls in the same order, as in any data-parallel script.
Two ways of sharing the work, both with the numbers of one process:

* **point-parallel** (:func:`gather`): the points, rays, probes or restarts of a
  call are split into contiguous shares by global index, each rank computes its
  share alone (:func:`local`: no collective inside), and the results are
  gathered in order. Each item's value depends on that item alone, so the
  results are bit-identical to one process on the same device and thread count.
* **data-parallel** (:func:`reduce_sum`): for sequential methods (Lanczos, a
  gradient ascent, L-BFGS) and evaluations with fewer points than ranks, each
  rank sums its contiguous data shard (:func:`share`) and the float64 sums are
  all-reduced: ``Σ_r Σ_{u ∈ shard r} value_u / Σ_u count_u``, never a mean of
  means and never a padded sampler. The order of the sums differs from one
  process, so results agree to rounding (1e-15 relative in float64).

An error on one rank stops every rank with the same sentence
(:class:`RankError`), not a hang: each collective here carries the ranks'
status, and a failure on any rank is raised on all of them. Rank 0 alone
writes files and shows progress (:func:`is_writer`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from .errors import BasinscopeError

T = TypeVar("T")

_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("basinscope_local", default=False)


class RankError(BasinscopeError):
    """An error on one rank of a process group, raised on every rank with its sentence.

    ``rank`` is the (group) rank where it happened; the CLI prints it on rank 0 only.
    """

    shared = True

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


@dataclass(frozen=True)
class Dist:
    """A process group of more than one rank, as basinscope uses it.

    Attributes:
        group: the ``ProcessGroup`` (``None``: the default, world group).
        rank, size: this process's rank in the group and the group's size.
    """

    group: Any
    rank: int
    size: int

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: the current CUDA device for NCCL, else the CPU."""
        import torch.distributed as dist

        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"Dist(rank={self.rank}, size={self.size})"


def resolve(group: Any = "auto") -> Dist | None:
    """The process group an Objective uses.

    ``"auto"``: the default group when ``torch.distributed`` is initialised with more
    than one rank (as under ``torchrun``), else none. ``None``: none (every rank
    works alone). A ``ProcessGroup``: that group (none if it has one rank).
    """
    if group is None:
        return None
    import torch.distributed as dist

    if isinstance(group, str):
        if group != "auto":
            raise BasinscopeError(
                f"group must be 'auto', None or a torch.distributed ProcessGroup, got {group!r}"
            )
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = None
    elif not (dist.is_available() and dist.is_initialized()):
        raise BasinscopeError(
            "group was given but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group first (torchrun sets it up)"
        )
    elif not isinstance(group, dist.ProcessGroup):
        raise BasinscopeError(
            f"group must be 'auto', None or a torch.distributed ProcessGroup, "
            f"got {type(group).__name__}"
        )
    size = dist.get_world_size(group)
    if size <= 1:
        return None
    return Dist(group=group, rank=dist.get_rank(group), size=size)


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside: this rank works alone (a point-parallel share); no collective is made."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def active(d: Dist | None) -> Dist | None:
    """``d``, or ``None`` inside :func:`local` (where each rank computes its own share)."""
    return None if d is None or _LOCAL.get() else d


def is_writer(d: Dist | None) -> bool:
    """Whether this process writes files and shows progress: rank 0 (or no group)."""
    d = active(d)
    return d is None or d.rank == 0


def share(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` items: ``[⌊n·r/R⌋, ⌊n·(r+1)/R⌋)``."""
    return slice(n * rank // size, n * (rank + 1) // size)


def _message(err: BaseException, rank: int) -> str:
    if isinstance(err, BasinscopeError):
        return str(err)
    text = str(err).strip().splitlines()
    return f"rank {rank} failed: {type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _collective(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``; a peer that died or timed out (the backend's error) is
    one sentence on this rank, not the backend's traceback."""
    try:
        return call(*args, **kwargs)
    except RuntimeError as err:  # gloo/NCCL: connection closed, timeout, abort
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise RankError(
            f"another process of the group stopped or did not answer in time ({first}); "
            "its own message says why",
            -1,
        ) from err


def _cpu(value: Any) -> Any:
    """``value`` with every tensor in it (in lists, tuples, dicts) moved to the CPU: what
    travels between ranks must not name one rank's GPU."""
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, list | tuple) and type(value) in (list, tuple):
        return type(value)(_cpu(v) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return {k: _cpu(v) for k, v in value.items()}
    return value


def _travels(value: Any) -> Any:
    """``value`` on the CPU, refused here (inside the ranks' error handling) if it cannot be
    pickled, rather than in the collective, where the other ranks would wait for it."""
    value = _cpu(value)
    pickle.dumps(value)
    return value


def _src(d: Dist) -> int:
    """The global rank of group rank 0 (what ``broadcast_object_list`` takes)."""
    import torch.distributed as dist

    return 0 if d.group is None else dist.get_global_rank(d.group, 0)


def _raise_first(d: Dist, statuses: list[Any], own: BaseException | None) -> None:
    """Raise the first failing rank's sentence on every rank (chained to its own error)."""
    for rank, status in enumerate(statuses):
        if status is not None:
            raise RankError(status, rank) from own


def gather(d: Dist | None, fn: Callable[[], T]) -> list[T]:
    """Every rank's ``fn()``, computed alone (:func:`local`), in rank order on every rank.

    ``fn`` computes this rank's share of point-parallel work. An exception on any
    rank is raised on all of them as :class:`RankError` with the first failing
    rank's sentence. Without a group: ``[fn()]``.
    """
    d = active(d)
    if d is None:
        return [fn()]
    import torch.distributed as dist

    own: BaseException | None = None
    try:
        with local():
            payload: Any = (None, _travels(fn()))
    except Exception as err:  # carried to every rank, raised there as one sentence
        own = err
        payload = (_message(err, d.rank), None)
    out: list[Any] = [None] * d.size
    _collective(dist.all_gather_object, out, payload, group=d.group)
    _raise_first(d, [status for status, _ in out], own)
    return [value for _, value in out]


def agree(d: Dist | None, fn: Callable[[], T]) -> T:
    """Rank 0's ``fn()`` on every rank (the others do not call ``fn``; it runs alone).

    For what one process decides or reads (a resumed file's contents, a plan's
    choice): an error there is raised on every rank as :class:`RankError`.
    """
    d = active(d)
    if d is None:
        return fn()
    import torch.distributed as dist

    own: BaseException | None = None
    payload: Any = None
    if d.rank == 0:
        try:
            with local():
                payload = (None, _travels(fn()))
        except Exception as err:
            own = err
            payload = (_message(err, 0), None)
    box = [payload]
    _collective(dist.broadcast_object_list, box, src=_src(d), group=d.group)
    status, value = box[0]
    if status is not None:
        raise RankError(status, 0) from own
    return value


def check(d: Dist | None, fn: Callable[[], T]) -> T:
    """``fn()`` on every rank, then agreement that no rank failed (one collective).

    For work every rank does alike before point-parallel work begins (checks that
    could fail on one rank only): a failure anywhere is raised everywhere.
    """
    d = active(d)
    if d is None:
        return fn()
    own: BaseException | None = None
    value: Any = None
    try:
        with local():
            value = fn()
    except Exception as err:
        own = err
    status = torch.tensor([0.0 if own is None else 1.0], dtype=torch.float64, device=d.device)
    import torch.distributed as dist

    _collective(dist.all_reduce, status, group=d.group)
    if float(status[0]) > 0:
        messages: list[Any] = [None] * d.size
        mine = None if own is None else _message(own, d.rank)
        _collective(dist.all_gather_object, messages, mine, group=d.group)
        _raise_first(d, messages, own)
    return value


def reduce_sum(d: Dist | None, fn: Callable[[], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """``Σ_ranks fn()``: each rank's partial sums (its data shard's), added elementwise.

    The tensors are summed in float64 and returned in their own dtypes and devices,
    the same on every rank. A failure on any rank is raised on all of them.
    """
    d = active(d)
    if d is None:
        return fn()
    import torch.distributed as dist

    own: BaseException | None = None
    parts: tuple[Tensor, ...] = ()
    try:
        with local():
            parts = tuple(fn())
    except Exception as err:
        own = err
    if own is None:
        flat = [p.detach().reshape(-1).to(d.device, torch.float64) for p in parts]
        body = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64, device=d.device)
        sizes = [p.numel() for p in parts]
    else:
        body = torch.zeros(0, dtype=torch.float64, device=d.device)
        sizes = []
    # The ranks' payloads must have one size: agree on it and on failures first, in one
    # small collective (MAX of [failed, size, −size] gives any failure, max and min size).
    size = float(body.numel())
    meta = torch.tensor([float(own is not None), size, -size], dtype=torch.float64, device=d.device)
    _collective(dist.all_reduce, meta, op=dist.ReduceOp.MAX, group=d.group)
    if float(meta[0]) > 0 or float(meta[1]) != -float(meta[2]):
        messages: list[Any] = [None] * d.size
        mine = None if own is None else _message(own, d.rank)
        _collective(dist.all_gather_object, messages, mine, group=d.group)
        if all(m is None for m in messages):
            messages[0] = "the ranks computed sums of different sizes (different data?)"
        _raise_first(d, messages, own)
    _collective(dist.all_reduce, body, group=d.group)
    out, start = [], 0
    for p, count in zip(parts, sizes, strict=True):
        out.append(body[start : start + count].reshape(p.shape).to(p.device, p.dtype))
        start += count
    return tuple(out)


def local_rank() -> int | None:
    """``LOCAL_RANK`` as torchrun sets it (the process's index on its node), if set."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None and value.isdigit() else None


@contextlib.contextmanager
def on_writer(
    d: Dist | None, enter: Callable[[], contextlib.AbstractContextManager]
) -> Iterator[None]:
    """Hold ``enter()`` (an output lock) on the writing rank alone for the block; a
    failure to take it (another writer) is raised on every rank."""
    with contextlib.ExitStack() as stack:

        def take() -> None:
            stack.enter_context(enter())

        agree(d, take)
        yield


_CLAIMS = [0]  # how many claim counters this process has made (the same on every rank)


def claims(d: Dist | None, n: int) -> Iterator[int]:
    """The items ``0 … n−1`` this rank takes, handed out as the ranks ask for them.

    Each rank claims the next unclaimed index from a counter in the group's key-value
    store (``store.add``) whenever it is free, so items of uneven cost (a study's runs)
    keep every rank busy. Which rank takes an item is a matter of timing; its result
    must not depend on it. Without a group: every item. Without a reachable store (a
    private torch API): the static share ``i ≡ rank (mod size)``. No collective: it may
    run inside :func:`local` (a rank's share of work), as the study's runs do.
    """
    if d is None:
        yield from range(n)
        return
    _CLAIMS[0] += 1
    store = default_store()
    if store is None:
        yield from range(d.rank, n, d.size)
        return
    import torch.distributed as dist

    members = (
        "all" if d.group is None else ",".join(map(str, dist.get_process_group_ranks(d.group)))
    )
    key = f"basinscope/claims/{members}/{_CLAIMS[0]}"
    while (index := int(store.add(key, 1)) - 1) < n:
        yield index


def default_store() -> Any:
    """The default group's key-value store (torchrun's rendezvous store), if reachable."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # a private API: without it the work is shared statically
        return None
