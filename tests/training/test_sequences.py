"""Tests for the sequence datasets: modular arithmetic, the Markov language, token files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.training import (
    load_dataset,
    markov_chain,
    markov_language,
    modular_arithmetic,
    token_files,
)
from basinscope.training._evaluate import _evaluate

# --------------------------------------------------------------------------- modular arithmetic


def _equations(bundle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = torch.cat([bundle.x_train, bundle.x_test]).numpy()
    c = torch.cat([bundle.y_train, bundle.y_test]).numpy()
    return x[:, 0], x[:, 2], c


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
@pytest.mark.parametrize("p", [2, 7, 13])
def test_every_pair_exactly_once_with_the_right_label(op, p):
    bundle = modular_arithmetic(p=p, op=op, train_fraction=0.4, seed=3)
    a, b, c = _equations(bundle)
    pairs = {(i, j) for i in range(p) for j in range(p) if op != "/" or j != 0}
    assert len(a) == len(pairs) and set(zip(a.tolist(), b.tolist(), strict=True)) == pairs
    if op == "+":
        assert np.array_equal(c, (a + b) % p)
    elif op == "-":
        assert np.array_equal((c + b) % p, a)  # c = a - b  <=>  c + b = a
    elif op == "*":
        assert np.array_equal(c, (a * b) % p)
    else:
        assert np.array_equal((c * b) % p, a)  # c = a / b  <=>  c · b = a
    assert ((c >= 0) & (c < p)).all()
    for x in (bundle.x_train, bundle.x_test):
        assert x.dtype == torch.int64 and x.shape[1] == 4
        assert bool((x[:, 1] == p).all() and (x[:, 3] == p + 1).all())
    assert bundle.n_classes == p and bundle.vocab_size == p + 2 and bundle.best_loss is None
    assert bundle.y_train.dtype == torch.int64 and not bundle.token_targets


def test_split_fraction_and_seed():
    n = 97 * 97
    for fraction in (0.3, 0.5, 0.9):
        bundle = modular_arithmetic(train_fraction=fraction)
        assert len(bundle.y_train) == round(fraction * n) and len(bundle.y_test) == n - len(
            bundle.y_train
        )
    a, b = modular_arithmetic(p=11, seed=0), modular_arithmetic(p=11, seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = modular_arithmetic(p=11, seed=1)
    assert len(c.x_train) == len(a.x_train) and not torch.equal(c.x_train, a.x_train)
    # the split does not touch global random state
    state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    modular_arithmetic(p=11, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state[0])
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_division_is_by_the_modular_inverse():
    bundle = modular_arithmetic(p=97, op="÷", train_fraction=0.5)
    a, b, c = _equations(bundle)
    assert len(a) == 97 * 96 and (b != 0).all()
    inverse = {j: pow(int(j), -1, 97) for j in range(1, 97)}
    assert all(ci == (ai * inverse[bi]) % 97 for ai, bi, ci in zip(a, b, c, strict=True))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"p": 8, "op": "/"}, "p 8 is not prime, so b has no inverse mod p"),
        ({"p": 1}, "p 1 is not valid; give an integer modulus from 2"),
        ({"p": 7.0}, "p 7.0 is not valid"),
        ({"op": "^"}, r"op '\^' is not known; accepted: \+, -"),
        ({"train_fraction": 1.0}, "train_fraction 1.0 is not valid for 9409 equations"),
        ({"train_fraction": 0.0}, "train_fraction 0.0 is not valid"),
        ({"p": 2, "train_fraction": 0.01}, "leaves at least one equation on each side"),
        ({"train_fraction": "half"}, "train_fraction 'half' is not valid; give a fraction"),
    ],
)
def test_modular_refusals(kw, match):
    with pytest.raises(BasinscopeError, match=match):
        modular_arithmetic(**kw)
    modular_arithmetic(p=8, op="*", train_fraction=0.5)  # non-prime is fine but for ÷


@pytest.mark.parametrize(("name", "op"), [("modular-add", "+"), ("modular-div", "/")])
def test_registry_names_use_the_defaults(name, op):
    bundle = load_dataset(name)  # standardize=True by default: token ids are left alone
    direct = modular_arithmetic(op=op)
    assert bundle.name == name and bundle.x_train.dtype == torch.int64
    assert torch.equal(bundle.x_train, direct.x_train) and torch.equal(bundle.y_test, direct.y_test)
    assert bundle.vocab_size == 99 and bundle.n_classes == 97 and bundle.input_shape == (4,)


def test_subsets_and_label_noise_work_on_modular_data():
    full = load_dataset("modular-mul")
    sub = load_dataset("modular-mul", train_size=100, seed=2)
    assert len(sub.y_train) == 100 and torch.equal(sub.x_test, full.x_test)
    rows = {tuple(r) for r in full.x_train.tolist()}
    assert all(tuple(r) in rows for r in sub.x_train.tolist())
    noisy = load_dataset("modular-mul", label_noise=0.1)
    wrong = int((noisy.y_train != full.y_train).sum())
    assert wrong == round(0.1 * len(full.y_train)) and torch.equal(noisy.x_train, full.x_train)


# --------------------------------------------------------------------------- Markov language


def test_chain_is_stochastic_and_stationary():
    chain = markov_chain(vocab_size=16, seed=0)
    p, pi = chain.transition, chain.stationary
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pi @ p, pi, atol=1e-12)
    assert (pi > 0).all() and abs(pi.sum() - 1) < 1e-12
    rate = -(pi * (p * np.log(p)).sum(axis=1)).sum()
    assert chain.entropy_rate == pytest.approx(rate, abs=1e-12)
    assert 0.5 < chain.entropy_rate < math.log(16) - 0.5  # sparse-ish rows: well below log V
    other = markov_chain(vocab_size=16, seed=1)
    assert not np.allclose(other.transition, p)


def _per_sequence_nll(transition: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Mean over each sequence's positions of -log P(y_t | x_t) under the true chain."""
    logp = np.log(transition)
    return -logp[x.numpy(), y.numpy()].mean(axis=1)


def test_entropy_of_a_long_sample_is_the_entropy_rate():
    # Monte Carlo over 3000 independent sequences of 64 steps: the mean of
    # -log P(x_t | x_{t-1}) is within a few standard errors of H = Σ π_i H(P_i).
    data = markov_language(vocab_size=16, seq_len=64, n_train=3000, n_test=1, seed=4)
    chain = markov_chain(vocab_size=16, seed=4)
    assert data.best_loss == chain.entropy_rate
    nll = _per_sequence_nll(chain.transition, data.x_train, data.y_train)
    se = nll.std(ddof=1) / math.sqrt(len(nll))
    assert se < 0.01  # the check has power
    assert abs(nll.mean() - data.best_loss) < 4 * se
    # the first token is stationary: every count within 4 binomial standard errors
    counts = np.bincount(data.x_train[:, 0].numpy(), minlength=16) / len(nll)
    pi = chain.stationary
    assert (np.abs(counts - pi) < 4 * np.sqrt(pi * (1 - pi) / len(nll)) + 1e-3).all()


class _TrueChain(nn.Module):
    """Predicts with the true transition matrix: logits_t = log P[x_t]."""

    def __init__(self, transition: np.ndarray):
        super().__init__()
        self.register_buffer("logp", torch.tensor(np.log(transition)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logp[x]


def test_the_true_chain_reaches_best_loss_on_the_data():
    data = markov_language(vocab_size=12, seq_len=32, n_train=2000, n_test=500, seed=7)
    chain = markov_chain(vocab_size=12, seed=7)
    model = _TrueChain(chain.transition)
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        loss, acc = _evaluate(model, x, y)  # the training loop's exact token mean
        nll = _per_sequence_nll(chain.transition, x, y)
        assert loss == pytest.approx(nll.mean(), abs=1e-9)
        se = nll.std(ddof=1) / math.sqrt(len(nll))
        assert abs(loss - data.best_loss) < 4 * se
        best = chain.transition.argmax(axis=1)
        assert acc == pytest.approx(float((best[x.numpy()] == y.numpy()).mean()))
    # any other predictor is worse in expectation: uniform logits cost log V
    flat = _TrueChain(np.full((12, 12), 1 / 12))
    uniform, _ = _evaluate(flat, data.x_train, data.y_train)
    assert uniform == pytest.approx(math.log(12)) and uniform > data.best_loss + 0.3


def test_markov_language_layout_and_seeding():
    data = markov_language(vocab_size=8, seq_len=10, n_train=50, n_test=20, seed=2)
    assert data.x_train.shape == data.y_train.shape == (50, 10)
    assert data.x_test.shape == (20, 10) and data.x_train.dtype == data.y_train.dtype == torch.int64
    assert torch.equal(data.x_train[:, 1:], data.y_train[:, :-1])  # y is x shifted by one
    assert data.n_classes == data.vocab_size == 8 and data.token_targets
    again = markov_language(vocab_size=8, seq_len=10, n_train=50, n_test=20, seed=2)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    more = markov_language(vocab_size=8, seq_len=10, n_train=80, n_test=20, seed=2)
    assert torch.equal(more.x_test, data.x_test)  # the test set does not depend on n_train
    assert torch.equal(more.x_train[:50], data.x_train)
    registry = load_dataset("markov-lm")
    assert registry.input_shape == (32,) and registry.vocab_size == 16
    assert registry.best_loss == markov_chain(16, seed=0).entropy_rate


def test_markov_refusals_and_token_target_options():
    with pytest.raises(BasinscopeError, match="vocab_size 1 is not valid"):
        markov_language(vocab_size=1)
    with pytest.raises(BasinscopeError, match="seq_len 0 is not valid"):
        markov_language(seq_len=0)
    with pytest.raises(BasinscopeError, match="concentration 0 is not valid"):
        markov_chain(concentration=0)
    with pytest.raises(BasinscopeError, match="label_noise 0.1 is not valid for 'markov-lm'"):
        load_dataset("markov-lm", label_noise=0.1)
    sub = load_dataset("markov-lm", train_size=0.25)
    assert sub.x_train.shape == sub.y_train.shape == (512, 32) and sub.best_loss is not None


# --------------------------------------------------------------------------- token files


def _stream(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=n)


@pytest.mark.parametrize("kind", ["bin", "npy"])
def test_token_files_round_trip_in_shifted_blocks(tmp_path, kind):
    train, val = _stream(1001, 300, 0), _stream(250, 300, 1)
    for name, data in (("train", train), ("val", val)):
        if kind == "bin":
            data.astype(np.uint16).tofile(tmp_path / f"{name}.bin")
        else:
            np.save(tmp_path / f"{name}.npy", data.astype(np.int32))
    bundle = token_files(tmp_path, block_size=16)
    for x, y, data in (
        (bundle.x_train, bundle.y_train, train),
        (bundle.x_test, bundle.y_test, val),
    ):
        n = (len(data) - 1) // 16
        assert x.shape == y.shape == (n, 16) and x.dtype == y.dtype == torch.int64
        for i in (0, 1, n - 1):
            assert x[i].tolist() == data[16 * i : 16 * i + 16].tolist()
            assert y[i].tolist() == data[16 * i + 1 : 16 * i + 17].tolist()
    assert bundle.vocab_size == bundle.n_classes == max(train.max(), val.max()) + 1
    assert token_files(tmp_path, 16, vocab_size=1000).n_classes == 1000


def test_token_files_refusals(tmp_path):
    with pytest.raises(BasinscopeError, match="token directory .* does not exist"):
        token_files(tmp_path / "absent", 8)
    _stream(100, 50).astype(np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(BasinscopeError, match=r"token file '.*val.bin' does not exist"):
        token_files(tmp_path, 8)
    (tmp_path / "val.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(BasinscopeError, match="holds 3 bytes, not a whole number of uint16"):
        token_files(tmp_path, 8)
    _stream(9, 50).astype(np.uint16).tofile(tmp_path / "val.bin")
    token_files(tmp_path, 8)  # 9 tokens make exactly one block of 8
    with pytest.raises(BasinscopeError, match="holds 9 tokens, too few for one block of 9"):
        token_files(tmp_path, 9)
    with pytest.raises(BasinscopeError, match="vocab_size 10 is not valid for token ids up to"):
        token_files(tmp_path, 8, vocab_size=10)
    with pytest.raises(BasinscopeError, match="block_size 0 is not valid"):
        token_files(tmp_path, 0)
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "train.npy", np.zeros(20, dtype=np.float32))
    np.save(npy / "val.npy", np.zeros(20, dtype=np.int64))
    with pytest.raises(
        BasinscopeError, match="holds a float32 array of shape \\(20,\\); give a 1-D"
    ):
        token_files(npy, 4)
    np.save(npy / "train.npy", -np.ones(20, dtype=np.int64))
    with pytest.raises(BasinscopeError, match="holds the token id -1; ids must be >= 0"):
        token_files(npy, 4)
    (npy / "train.npy").write_bytes(b"not numpy")
    with pytest.raises(BasinscopeError, match="is not a readable .npy file"):
        token_files(npy, 4)


def test_token_files_by_name_from_the_data_dir_and_trained_from_a_config(tmp_path):
    train, val = _stream(2001, 40, 2), _stream(401, 40, 3)
    train.astype(np.uint16).tofile(tmp_path / "train.bin")
    val.astype(np.uint16).tofile(tmp_path / "val.bin")
    named = load_dataset("tokens:block_size=8,vocab_size=64", data_dir=tmp_path)
    direct = token_files(tmp_path, 8, vocab_size=64)
    assert torch.equal(named.x_train, direct.x_train) and torch.equal(named.y_test, direct.y_test)
    assert named.n_classes == 64
    with pytest.raises(BasinscopeError, match="reads your token files from data_dir"):
        load_dataset("tokens:block_size=8")
    with pytest.raises(BasinscopeError, match="needs a block size"):
        load_dataset("tokens:", data_dir=tmp_path)
    with pytest.raises(BasinscopeError, match="'path=x' is not an option of tokens"):
        load_dataset("tokens:block_size=8,path=x", data_dir=tmp_path)
    from basinscope.training import TrainConfig
    from basinscope.training import train as train_run

    cfg = TrainConfig(
        dataset="tokens:block_size=8",
        data_dir=str(tmp_path),
        model="transformer",
        model_kwargs={"d_model": 8, "n_heads": 2, "n_layers": 1},
        optimizer="adamw",
        lr=1e-2,
        steps=3,
        batch_size=16,
    )
    result = train_run(cfg, progress=False)
    assert result.model(named.x_train[:2]).shape == (2, 8, token_files(tmp_path, 8).n_classes)
