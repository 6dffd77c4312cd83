"""Sequence data, offline: modular arithmetic, a Markov language, a user's token files.

* :func:`modular_arithmetic`: every equation ``a ∘ b = c (mod p)`` as the tokens
  ``[a, ∘, b, =]`` with the label ``c``, split at random into train and test
  (Power et al. 2022, "Grokking").
* :func:`markov_language`: sequences of a seeded Markov chain (:func:`markov_chain`),
  whose best possible per-token loss, the entropy rate, is known in closed form.
* :func:`token_files`: a stream of token ids in nanoGPT's ``train.bin``/``val.bin``
  layout (or ``.npy``), cut into blocks ``x = data[i:i+T]``, ``y = data[i+1:i+T+1]``.

All randomness comes from generators made here from the ``seed`` argument
(``numpy.random.SeedSequence``); no global random state is read or changed.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._checks import check_seed
from ..errors import BasinscopeError
from ._bundle import DataBundle, _token_bundle

#: operator -> (name, c(a, b, p)); ÷ multiplies by the inverse b^(p-2) mod p (Fermat).
_OPS = {
    "+": ("add", lambda a, b, p: (a + b) % p),
    "-": ("sub", lambda a, b, p: (a - b) % p),
    "*": ("mul", lambda a, b, p: (a * b) % p),
    "/": ("div", lambda a, b, p: (a * _inverse(b, p)) % p),
}
_ALIASES = {"−": "-", "×": "*", "÷": "/", **{name: op for op, (name, _) in _OPS.items()}}


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


def _inverse(b: np.ndarray, p: int) -> np.ndarray:
    """``b^(p-2) mod p`` elementwise, by repeated squaring in int64 (``p < 2**31``)."""
    result, base, e = np.ones_like(b), b % p, p - 2
    while e:
        if e & 1:
            result = result * base % p
        base, e = base * base % p, e >> 1
    return result


def _check_fraction(train_fraction: object, n: int) -> int:
    """The number of training pairs ``round(f · n)``, refusing a split with an empty side."""
    if not (isinstance(train_fraction, numbers.Real) and not isinstance(train_fraction, bool)):
        raise BasinscopeError(
            f"train_fraction {train_fraction!r} is not valid; give a fraction in (0, 1)."
        )
    k = round(float(train_fraction) * n)
    if not (0.0 < float(train_fraction) < 1.0 and 1 <= k < n):
        raise BasinscopeError(
            f"train_fraction {train_fraction!r} is not valid for {n} equations; give a "
            f"fraction in (0, 1) that leaves at least one equation on each side."
        )
    return k


def modular_arithmetic(
    p: int = 97, op: str = "+", train_fraction: float = 0.3, seed: int = 0
) -> DataBundle:
    """Every equation ``a ∘ b ≡ c (mod p)`` as tokens ``[a, ∘, b, =]`` -> ``c`` (Power et al. 2022).

    The equations are all pairs ``(a, b) ∈ [0, p)²`` (for ``÷``: ``b ≠ 0``, and
    ``c = a · b⁻¹ mod p``, ``p`` prime). Token ids ``0..p-1`` are the numbers, ``p``
    the operator and ``p + 1`` the ``=`` sign, so ``vocab_size = p + 2`` and the label
    is one of ``n_classes = p`` numbers. A permutation seeded by ``seed`` puts
    ``round(train_fraction · n)`` equations in the training split and the rest in the
    test split (each split in (a, b) order). Power et al. trained on 30-50% of the
    table; 0.3 is the fraction of Nanda et al. (2023).

    Args:
        p: the modulus, at least 2 (a prime for ``÷``).
        op: ``"+"``, ``"-"``, ``"*"`` or ``"/"`` (also ``−``, ``×``, ``÷`` or
            ``add``, ``sub``, ``mul``, ``div``).
        train_fraction: the fraction of equations in the training split, in (0, 1).
        seed: seed of the split.

    Returns:
        A :class:`DataBundle`: ``x`` int64 ``[N, 4]``, ``y`` int64 ``[N]`` in ``[0, p)``.
    """
    if not isinstance(op, str) or _ALIASES.get(op, op) not in _OPS:
        accepted = ", ".join([*_OPS, *_ALIASES])
        raise BasinscopeError(f"op {op!r} is not known; accepted: {accepted}.")
    op = _ALIASES.get(op, op)
    if not _is_int(p) or p < 2 or p >= 2**31:
        raise BasinscopeError(f"p {p!r} is not valid; give an integer modulus from 2 to 2**31 - 1.")
    p = int(p)
    if op == "/" and not _is_prime(p):
        raise BasinscopeError(
            f"p {p} is not prime, so b has no inverse mod p for every b ≠ 0; give a prime "
            "modulus for division, e.g. 97."
        )
    seed = check_seed("seed", seed)
    a, b = (g.reshape(-1) for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    if op == "/":
        a, b = a[b != 0], b[b != 0]
    c = _OPS[op][1](a, b, p)
    x = np.stack([a, np.full_like(a, p), b, np.full_like(a, p + 1)], axis=1)
    n_train = _check_fraction(train_fraction, len(a))
    order = np.random.default_rng(np.random.SeedSequence(seed)).permutation(len(a))
    train, test = np.sort(order[:n_train]), np.sort(order[n_train:])
    return _token_bundle(f"modular-{_OPS[op][0]}", (x[train], c[train], x[test], c[test]), p, p + 2)


@dataclass(frozen=True)
class MarkovChain:
    """A Markov chain over ``V`` tokens and its entropy rate.

    Attributes:
        transition: float64 ``[V, V]``, row ``i`` is ``P(x_t = · | x_{t-1} = i)``.
        stationary: float64 ``[V]``, the stationary distribution ``π = π P``.
        entropy_rate: ``H = Σ_i π_i H(P_i) = -Σ_i π_i Σ_j P_ij log P_ij`` in nats.
    """

    transition: np.ndarray
    stationary: np.ndarray
    entropy_rate: float

    def sample(self, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` sequences of ``length`` tokens, int64 ``[n, length]``; ``x_0 ~ π``.

        The uniforms are drawn as one ``[n, length]`` array (row by row), so the
        first ``m`` sequences of ``n`` are the ``m`` sequences of the same generator.
        """
        u = rng.random((n, length))
        v = len(self.stationary)
        out = np.empty((n, length), dtype=np.int64)
        # the first j with u < cdf[j]; the min guards a last cdf entry below 1
        first = np.searchsorted(np.cumsum(self.stationary), u[:, 0], "right")
        out[:, 0] = np.minimum(first, v - 1)
        cdf = np.cumsum(self.transition, axis=1)
        for t in range(1, length):
            out[:, t] = np.minimum((u[:, t, None] >= cdf[out[:, t - 1]]).sum(axis=1), v - 1)
        return out


def markov_chain(vocab_size: int = 16, concentration: float = 0.2, seed: int = 0) -> MarkovChain:
    """The seeded chain :func:`markov_language` samples: rows ``P_i ~ Dirichlet(α·1)``.

    A small ``α`` (``concentration``) puts most of a row's mass on a few tokens,
    so the entropy rate lies well below ``log V``. Every entry is positive, so the
    chain is irreducible and aperiodic and ``π`` is unique; it is the solution of
    ``(Pᵀ − I) π = 0``, ``Σ π = 1``.
    """
    if not (_is_int(vocab_size) and vocab_size >= 2):
        raise BasinscopeError(f"vocab_size {vocab_size!r} is not valid; give an integer >= 2.")
    if not (
        isinstance(concentration, numbers.Real)
        and not isinstance(concentration, bool)
        and 0.01 <= concentration <= 1e6
    ):
        raise BasinscopeError(
            f"concentration {concentration!r} is not valid; give a number from 0.01 to 1e6."
        )
    chain_seed = np.random.SeedSequence(check_seed("seed", seed)).spawn(3)[0]
    rng = np.random.default_rng(chain_seed)
    v = int(vocab_size)
    transition = rng.dirichlet(np.full(v, float(concentration)), size=v)
    transition = np.maximum(transition, np.finfo(np.float64).tiny)  # log P stays finite
    transition /= transition.sum(axis=1, keepdims=True)
    system = transition.T - np.eye(v)
    system[-1] = 1.0  # replace one (dependent) balance equation by Σ π = 1
    rhs = np.zeros(v)
    rhs[-1] = 1.0
    stationary = np.linalg.solve(system, rhs)
    rate = float(-(stationary * (transition * np.log(transition)).sum(axis=1)).sum())
    return MarkovChain(transition, stationary, rate)


def markov_language(
    vocab_size: int = 16,
    seq_len: int = 32,
    n_train: int = 2048,
    n_test: int = 512,
    concentration: float = 0.2,
    seed: int = 0,
) -> DataBundle:
    """Sequences of a seeded Markov chain, for next-token prediction with a known optimum.

    Each sequence has ``seq_len + 1`` tokens ``s`` with ``s_0 ~ π`` and
    ``s_t ~ P[s_{t-1}]`` (the chain of :func:`markov_chain`); ``x = s[:-1]``,
    ``y = s[1:]``. Since ``s_0`` is stationary, every ``s_{t-1}`` is distributed as
    ``π``, so the Bayes-optimal predictor ``P[s_{t-1}]`` has expected loss exactly the
    entropy rate ``H = Σ_i π_i H(P_i)`` at every predicted position: ``best_loss = H``
    (in nats) is the exact expected optimum of the per-token mean cross-entropy on
    this data. The loss it reaches on a finite sample differs from ``H`` by sampling
    noise only. The chain, the training and the test sequences come from three
    independent streams of ``seed``, so ``n_train`` changes neither the chain nor the
    test set.

    Returns:
        A :class:`DataBundle` with ``x``, ``y`` int64 ``[N, seq_len]``,
        ``n_classes = vocab_size`` and ``best_loss = H``.
    """
    for name, v in (("seq_len", seq_len), ("n_train", n_train), ("n_test", n_test)):
        if not (_is_int(v) and v >= 1):
            raise BasinscopeError(f"{name} {v!r} is not valid; give a positive integer.")
    chain = markov_chain(vocab_size, concentration, seed)
    streams = np.random.SeedSequence(check_seed("seed", seed)).spawn(3)
    train = chain.sample(int(n_train), int(seq_len) + 1, np.random.default_rng(streams[1]))
    test = chain.sample(int(n_test), int(seq_len) + 1, np.random.default_rng(streams[2]))
    arrays = (train[:, :-1], train[:, 1:], test[:, :-1], test[:, 1:])
    v = int(vocab_size)
    return _token_bundle("markov-lm", arrays, v, v, best_loss=chain.entropy_rate)


def _read_tokens(path: Path) -> np.ndarray:
    """A 1-D stream of non-negative integer token ids from a ``.bin`` (uint16) or ``.npy`` file."""
    if not path.is_file():
        raise BasinscopeError(f"token file {str(path)!r} does not exist or is not a file.")
    if path.suffix == ".bin":
        size = path.stat().st_size
        if size % 2:
            raise BasinscopeError(
                f"token file {str(path)!r} holds {size} bytes, not a whole number of uint16 "
                "token ids; give nanoGPT's .bin layout (np.uint16, native byte order)."
            )
        return np.memmap(path, dtype=np.uint16, mode="r") if size else np.zeros(0, np.uint16)
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BasinscopeError(f"token file {str(path)!r} is not a readable .npy file: {e}.") from e
    if data.ndim != 1 or not np.issubdtype(data.dtype, np.integer):
        raise BasinscopeError(
            f"token file {str(path)!r} holds a {data.dtype} array of shape {data.shape}; give "
            "a 1-D array of integer token ids."
        )
    if data.size and int(data.min()) < 0:
        raise BasinscopeError(
            f"token file {str(path)!r} holds the token id {int(data.min())}; ids must be >= 0."
        )
    return data


def _blocks(data: np.ndarray, block_size: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping blocks ``x_i = data[iT : iT+T]``, ``y_i = data[iT+1 : iT+T+1]``."""
    n = (len(data) - 1) // block_size
    if n < 1:
        raise BasinscopeError(
            f"token file {str(path)!r} holds {len(data)} tokens, too few for one block of "
            f"{block_size} inputs and its shifted targets; give at least {block_size + 1}."
        )
    used = np.asarray(data[: n * block_size + 1], dtype=np.int64)
    return used[:-1].reshape(n, block_size), used[1:].reshape(n, block_size)


def token_files(path: str | Path, block_size: int, *, vocab_size: int | None = None) -> DataBundle:
    """A user's token stream in nanoGPT's layout, cut into next-token blocks.

    ``path`` is a directory holding ``train.bin`` and ``val.bin`` (uint16 token ids,
    as nanoGPT's ``prepare.py`` writes them; read with ``np.memmap``) or, when there
    is no ``train.bin``, ``train.npy`` and ``val.npy`` (1-D integer arrays). Each
    stream is cut into ``⌊(L − 1) / T⌋`` non-overlapping blocks ``x_i = data[iT :
    iT + T]`` with targets ``y_i = data[iT + 1 : iT + T + 1]``; tokens left over at the
    end are dropped.

    Args:
        path: the directory.
        block_size: ``T``, the tokens of one block.
        vocab_size: the number of token ids; default the largest id in the files + 1.

    Returns:
        A :class:`DataBundle` with ``x``, ``y`` int64 ``[N, T]`` and
        ``n_classes = vocab_size``.
    """
    if not (_is_int(block_size) and block_size >= 1):
        raise BasinscopeError(f"block_size {block_size!r} is not valid; give a positive integer.")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise BasinscopeError(
            f"token directory {str(directory)!r} does not exist; give a directory holding "
            "train.bin and val.bin (or train.npy and val.npy)."
        )
    suffix = ".bin" if (directory / "train.bin").exists() else ".npy"
    files = [directory / f"{split}{suffix}" for split in ("train", "val")]
    splits = [_blocks(_read_tokens(f), int(block_size), f) for f in files]
    largest = max(int(a.max()) for split in splits for a in split)
    if vocab_size is None:
        vocab_size = largest + 1
    elif not (_is_int(vocab_size) and vocab_size > largest):
        raise BasinscopeError(
            f"vocab_size {vocab_size!r} is not valid for token ids up to {largest}; give an "
            f"integer of at least {largest + 1}."
        )
    (x_tr, y_tr), (x_te, y_te) = splits
    v = int(vocab_size)
    return _token_bundle(str(directory), (x_tr, y_tr, x_te, y_te), v, v)
