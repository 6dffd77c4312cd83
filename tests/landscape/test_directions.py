from __future__ import annotations

import pytest
import torch
from conftest import small_mlp
from torch import nn

import basinscope as bs
from basinscope.landscape import gram_schmidt, normalize


@pytest.fixture
def obj():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3)
    ).double()
    X, y = torch.randn(8, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    return bs.Objective(model, nn.CrossEntropyLoss(), (X, y))


def test_filter_normalisation_gives_each_filter_the_weight_norm(obj):
    d = bs.random_directions(obj, 1, norm="filter", seed=0)[0]
    dirs, weights = obj.space.unflatten(d), obj.space.unflatten(obj.theta0)
    for name in obj.space.names:
        w, v = weights[name], dirs[name]
        if w.ndim <= 1:  # biases and BatchNorm parameters: d = θ, as in Li et al.
            assert torch.equal(v, w)
        else:
            wn = w.reshape(w.shape[0], -1).norm(dim=1)
            dn = v.reshape(v.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dn, wn, rtol=1e-12, atol=0)
            assert not torch.allclose(v, w)  # a random direction, not the weights


def test_layer_and_none_normalisations(obj):
    g1 = torch.Generator().manual_seed(5)
    raw = torch.randn(obj.n, generator=g1, dtype=torch.float32).double()
    layer = obj.space.unflatten(normalize(raw, obj.theta0, obj.space, "layer"))
    for name, w in obj.space.unflatten(obj.theta0).items():
        assert float(layer[name].norm()) == pytest.approx(float(w.norm()), rel=1e-12)
    d = bs.random_directions(obj, 1, norm="none", generator=torch.Generator().manual_seed(5))[0]
    assert torch.equal(d, raw)


def test_skip_bias_norm_space_has_only_filters():
    model, X, y = small_mlp()
    obj = bs.Objective(model, nn.CrossEntropyLoss(), (X, y), skip_bias_norm=True)
    assert obj.n == 6 * 8 + 8 * 7 + 7 * 3
    d = bs.random_directions(obj, 2, seed=1)
    assert d.shape == (2, obj.n)


def test_reproducible_from_seed_or_generator(obj):
    a = bs.random_directions(obj, 2, seed=7)
    b = bs.random_directions(obj, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    state = torch.random.get_rng_state()
    bs.random_directions(obj, 2, seed=8)
    assert torch.equal(state, torch.random.get_rng_state())  # no global seeding


def test_gram_schmidt_orthogonal_and_norm_kept(obj):
    d = bs.random_directions(obj, 3, seed=2)
    o = gram_schmidt(d)
    assert torch.equal(o[0], d[0])
    for i in range(3):
        assert float(o[i].norm()) == pytest.approx(float(d[i].norm()), rel=1e-12)
        for j in range(i):
            assert abs(float(o[i] @ o[j])) < 1e-12 * float(o[i].norm() * o[j].norm())
    assert torch.equal(bs.random_directions(obj, 3, seed=2, orthogonalize=True), o)


def test_bad_input(obj):
    with pytest.raises(bs.BasinscopeError, match="unknown normalisation"):
        bs.random_directions(obj, 2, norm="bogus", seed=0)
    with pytest.raises(bs.BasinscopeError, match="seed"):
        bs.random_directions(obj, 2)
