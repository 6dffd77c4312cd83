"""Tests for the built-in causal transformer: causality, readouts, tying, its layout and options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.training import MODELS, Transformer, build_model


def _tokens(b: int, t: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    base = {"d_model": 16, "n_heads": 2, "n_layers": 2}
    return Transformer((8,), 11, **{**base, **kw}).eval()


def test_registered_under_its_name():
    assert MODELS["transformer"] is Transformer
    model = build_model("transformer", (8,), 11, d_model=16, n_heads=2)
    assert isinstance(model, Transformer) and model(_tokens(3, 8, 11)).shape == (3, 8, 11)


@pytest.mark.parametrize("t", [1, 3, 7])
def test_no_logit_before_t_depends_on_token_t(t):
    # Causal: changing token t moves no logit at a position < t, and moves those at >= t.
    model = _model(vocab_size=11)
    x = _tokens(4, 8, 11)
    y = x.clone()
    y[:, t] = (y[:, t] + 1 + torch.arange(4)) % 11
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=-1).min() > 1e-4


def test_readouts_shapes_and_last_is_the_last_position_of_sequence():
    seq, last = _model(vocab_size=13), _model(vocab_size=13, readout="last")
    assert [p.shape for p in seq.parameters()] == [p.shape for p in last.parameters()]
    last.load_state_dict(seq.state_dict())
    x = _tokens(5, 6, 13)  # shorter than block_size 8 is accepted
    with torch.no_grad():
        out_seq, out_last = seq(x), last(x)
    assert out_seq.shape == (5, 6, 11) and out_last.shape == (5, 11)
    torch.testing.assert_close(out_last, out_seq[:, -1], atol=1e-6, rtol=0)


def test_tied_weights_share_one_tensor():
    model = _model(tie_weights=True)  # vocab_size defaults to n_classes
    assert model.head.weight is model.tok_emb.weight
    names = [n for n, _ in model.named_parameters()]
    assert "head.weight" not in names and names.count("tok_emb.weight") == 1
    untied = _model()
    assert untied.head.weight is not untied.tok_emb.weight
    n_tied = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in untied.parameters()) - n_tied == 11 * 16
    # a gradient step through the head moves the embedding with it
    model.train()
    model(_tokens(2, 8, 11)).sum().backward()
    with torch.no_grad():
        model.head.weight -= 0.1 * model.head.weight.grad
    assert torch.equal(model.head.weight, model.tok_emb.weight)


def test_parameter_count_closed_form():
    v, t, d, layers, m, k = 13, 8, 16, 2, 24, 11
    model = Transformer((t,), k, vocab_size=v, d_model=d, n_heads=4, n_layers=layers, d_mlp=m)
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    assert (
        sum(p.numel() for p in model.parameters())
        == v * d + t * d + layers * per_layer + 2 * d + d * k
    )


def test_layout_is_pre_norm_with_gelu_mlp():
    # Rebuild the forward pass by hand from the modules: LN -> attention -> residual, LN -> MLP.
    model = _model(vocab_size=11, n_layers=1)
    block = model.blocks[0]
    assert isinstance(block.mlp[1], nn.GELU) and block.mlp[0].out_features == 4 * 16
    x = _tokens(3, 8, 11)
    with torch.no_grad():
        h = model.tok_emb(x) + model.pos_emb(torch.arange(8))
        z = block.ln1(h)
        q, k, v = block.attn.qkv(z).split(16, dim=-1)
        heads = [slice(0, 8), slice(8, 16)]
        mask = torch.ones(8, 8).tril().bool()
        out = []
        for s in heads:
            scores = (q[..., s] @ k[..., s].transpose(1, 2)) / 8**0.5
            out.append(scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v[..., s])
        h = h + block.attn.proj(torch.cat(out, dim=-1))
        h = h + block.mlp(block.ln2(h))
        expected = model.head(model.ln_f(h))
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_initialisation_is_seeded_by_the_global_rng_and_gpt2_scaled():
    a, b = _model(), _model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    torch.manual_seed(1)
    c = Transformer((8,), 11, d_model=16, n_heads=2, n_layers=2)
    assert not torch.equal(c.tok_emb.weight, a.tok_emb.weight)
    big = Transformer((64,), 512, d_model=128, n_heads=4, n_layers=8)
    assert abs(big.tok_emb.weight.std().item() - 0.02) < 1e-3
    assert abs(big.blocks[0].attn.proj.weight.std().item() - 0.02 / 4) < 3e-4  # 1/sqrt(2*8)
    assert torch.count_nonzero(big.blocks[0].attn.qkv.bias) == 0


def test_dropout_is_active_in_train_mode_only():
    model = _model(dropout=0.5)
    x = _tokens(2, 8, 11)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: deterministic
        model.train()
        assert not torch.equal(model(x), model(x))


def test_forward_refuses_float_and_too_long_inputs():
    model = _model()
    with pytest.raises(BasinscopeError, match="give int64 token ids"):
        model(torch.zeros(2, 8))
    with pytest.raises(BasinscopeError, match="length 9; give at most block_size 8"):
        model(_tokens(2, 9, 11))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"input_shape": (2, 8)}, r"input_shape \(2, 8\) is not valid for the transformer"),
        (
            {"d_model": 10, "n_heads": 4},
            "d_model 10 is not valid with n_heads 4; give a d_model div",
        ),
        ({"n_heads": 0}, "n_heads 0 is not valid; give a positive integer"),
        ({"d_model": 2.5}, "d_model 2.5 is not valid"),
        ({"n_layers": -1}, "n_layers -1 is not valid; give an integer >= 0"),
        ({"vocab_size": 0}, "vocab_size 0 is not valid"),
        ({"block_size": 4}, "block_size 4 is not valid for sequences of length 8"),
        ({"d_mlp": 0}, "d_mlp 0 is not valid"),
        ({"dropout": 1.0}, r"dropout 1.0 is not valid; give a number in \[0, 1\)"),
        ({"readout": "mean"}, "readout 'mean' is not known; accepted: sequence, last"),
        ({"tie_weights": 1}, "tie_weights 1 is not valid; give true or false"),
        ({"readout": "last"}, "vocab_size None is not valid with readout 'last'"),
        (
            {"vocab_size": 13, "tie_weights": True},
            "tie_weights True is not valid with n_classes 11",
        ),
        ({"n_classes": 0}, "n_classes 0 is not valid"),
    ],
)
def test_bad_options_get_one_sentence(kw, match):
    args = {"input_shape": (8,), "n_classes": 11, "d_model": 16, "n_heads": 2, **kw}
    with pytest.raises(BasinscopeError, match=match):
        Transformer(**args)


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(
        BasinscopeError, match="does not accept option.*n_embd.*accepted: vocab_size"
    ):
        build_model("transformer", (8,), 11, n_embd=16)


def test_zero_layers_is_a_bigram_model():
    # Without blocks position t's logits depend on token t (and its position) only.
    model = _model(n_layers=0)
    x = _tokens(3, 8, 11)
    y = x.clone()
    y[:, 2] = (y[:, 2] + 1) % 11
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :2], b[:, :2]) and torch.equal(a[:, 3:], b[:, 3:])
    assert not torch.equal(a[:, 2], b[:, 2])
