"""Training the transformer on token data: modular arithmetic, a Markov language, token means."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from basinscope.errors import BasinscopeError
from basinscope.training import (
    IGNORE_INDEX,
    TrainConfig,
    Transformer,
    data_model_options,
    load_checkpoint,
    make_model,
    markov_language,
    modular_arithmetic,
    train,
)
from basinscope.training._evaluate import _loss

TINY = {"d_model": 32, "n_heads": 2, "n_layers": 1}


def _cfg(**kw) -> TrainConfig:
    base = {
        "dataset": "unused",
        "model": "transformer",
        "model_kwargs": TINY,
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 0.1,
        "batch_size": 16,
        "warmup_steps": 10,
        "schedule": "cosine",
    }
    return TrainConfig(**{**base, **kw})


def _exact(model, x, y) -> tuple[float, float]:
    """The dataset's mean cross-entropy and accuracy in one float64 pass (all counted targets)."""
    with torch.no_grad():
        out = model.eval()(x).double()
    flat, target = out.reshape(-1, out.shape[-1]), y.reshape(-1)
    keep = target != IGNORE_INDEX
    loss = F.cross_entropy(flat[keep], target[keep]).item()
    return loss, (flat[keep].argmax(1) == target[keep]).double().mean().item()


def _params_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_transformer_learns_modular_addition_and_records_exact_means():
    data = modular_arithmetic(p=11, train_fraction=0.5)
    result = train(_cfg(steps=120), data, progress=False)
    first, last = result.history[0], result.final
    assert last["train_loss"] < first["train_loss"] - 0.7  # from about log 11 = 2.4
    assert last["train_acc"] > 0.3 and first["train_acc"] < 0.2
    model = result.model
    assert isinstance(model, Transformer) and model.readout == "last" and model.vocab_size == 13
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        loss, acc = _exact(model, x, y)
        assert last[f"{split}_loss"] == pytest.approx(loss, abs=1e-6)
        assert last[f"{split}_acc"] == pytest.approx(acc, abs=1e-12)
    assert last["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine annealed to 0 at the end


def _with_ignored(data):
    """Mask the targets of every other sequence after its first 3 positions: uneven counts."""
    y = data.y_train.clone()
    y[::2, 3:] = IGNORE_INDEX
    return dataclasses.replace(data, y_train=y)


def test_transformer_learns_the_markov_language_with_token_means():
    data = _with_ignored(markov_language(vocab_size=8, seq_len=16, n_train=256, n_test=128))
    config = _cfg(lr=1e-2, weight_decay=0.01, batch_size=32, epochs=4, warmup_steps=5)
    result = train(config, data, progress=False)
    first, last = result.history[0], result.final
    assert last["train_loss"] < first["train_loss"] - 0.5
    assert last["test_loss"] < data.best_loss + 0.2  # near the entropy rate
    assert last["test_loss"] > data.best_loss - 0.05  # no model beats it (up to sampling noise)
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        loss, acc = _exact(result.model, x, y)
        assert last[f"{split}_loss"] == pytest.approx(loss, abs=1e-6)
        assert last[f"{split}_acc"] == pytest.approx(acc, abs=1e-12)
    # a mean of per-sequence means weighs the masked sequences' 3 tokens like 16: not it
    with torch.no_grad():
        out = result.model(data.x_train).double()
    per_token = F.cross_entropy(
        out.transpose(1, 2), data.y_train, ignore_index=IGNORE_INDEX, reduction="none"
    )
    counted = (data.y_train != IGNORE_INDEX).double()
    per_sequence = (per_token.sum(1) / counted.sum(1)).mean().item()
    assert abs(per_sequence - last["train_loss"]) > 1e-4


def test_minibatch_loss_is_the_mean_over_counted_tokens():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (3, 5), generator=g)
    y[0, 1:] = IGNORE_INDEX
    y[2, 4] = IGNORE_INDEX
    loss = _loss(out, y)
    logp = out.log_softmax(-1)
    terms = [-logp[b, t, y[b, t]] for b in range(3) for t in range(5) if y[b, t] != IGNORE_INDEX]
    assert len(terms) == 10 and loss.item() == pytest.approx(sum(terms).item() / 10, abs=1e-12)
    loss.backward()
    assert torch.count_nonzero(out.grad[0, 1:]) == 0 and torch.count_nonzero(out.grad[2, 4]) == 0
    nothing = torch.full((2, 5), IGNORE_INDEX)
    assert _loss(out[:2], nothing).item() == 0.0  # no counted token: 0, not NaN


def test_registry_modular_add_trains_out_of_the_box_and_reloads(tmp_path):
    config = TrainConfig(
        dataset="modular-add",
        model="transformer",
        model_kwargs={"d_model": 16, "n_heads": 2, "n_layers": 1},
        optimizer="adamw",
        lr=1e-2,
        weight_decay=1.0,
        batch_size=512,
        steps=6,
        warmup_steps=2,
        schedule="cosine",
    )
    result = train(config, out_dir=tmp_path, progress=False)
    assert result.final["train_loss"] < result.history[0]["train_loss"]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["input_shape"], saved["n_classes"]) == ([4], 97)
    assert (saved["vocab_size"], saved["readout"]) == (99, "last")
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.model.readout == "last" and _params_equal(checkpoint.model, result.model)
    again = train(config, out_dir=tmp_path, progress=False)
    assert again.reused and again.final == result.final


def test_resume_of_a_transformer_run_is_bit_identical(tmp_path):
    data = markov_language(vocab_size=6, seq_len=8, n_train=96, n_test=32)
    config = _cfg(dropout=0.1, epochs=3, batch_size=32, warmup_steps=2, sam_rho=0.05)
    whole = train(config, data, out_dir=tmp_path / "whole", progress=False)

    class Crash(Exception):
        pass

    def crash_after_first(rec):
        if rec["epoch"] == 1:
            raise Crash

    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(config, data, out_dir=run, progress=False, on_epoch_end=crash_after_first)
    seen = []
    resumed = train(config, data, out_dir=run, progress=False, on_epoch_end=seen.append)
    assert [r["epoch"] for r in seen] == [2, 3]
    assert _params_equal(resumed.model, whole.model) and resumed.history == whole.history


def test_adamw_weight_decay_shrinks_the_transformer_weights():
    data = modular_arithmetic(p=7, train_fraction=0.5)

    def norm(wd: float) -> float:
        model = train(_cfg(steps=30, weight_decay=wd, lr=1e-2), data, progress=False).model
        return math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()))

    assert norm(5.0) < 0.9 * norm(0.0)


def test_make_model_fills_in_vocab_size_and_readout_from_the_data():
    modular, markov = modular_arithmetic(p=5), markov_language(vocab_size=6, seq_len=4, n_train=4)
    assert data_model_options(modular) == {"vocab_size": 7, "readout": "last"}
    assert data_model_options(markov) == {"vocab_size": 6, "readout": "sequence"}
    feature = dataclasses.replace(modular, x_train=modular.x_train.float(), vocab_size=None)
    assert data_model_options(feature) == {}
    unknown = dataclasses.replace(modular, vocab_size=None)  # int inputs: the largest id + 1
    assert data_model_options(unknown)["vocab_size"] == 7
    model = make_model(_cfg(), (4,), 5, **data_model_options(modular))
    assert (model.vocab_size, model.readout, model.head.out_features) == (7, "last", 5)
    own = make_model(_cfg(model_kwargs={**TINY, "vocab_size": 9}), (4,), 5, vocab_size=7)
    assert own.vocab_size == 9  # the config's own option wins


def test_a_readout_that_does_not_fit_the_targets_is_refused_in_one_sentence():
    data = modular_arithmetic(p=5)
    config = _cfg(model_kwargs={**TINY, "readout": "sequence"}, steps=1)
    with pytest.raises(BasinscopeError, match=r"returned shape \(2, 4, 5\) .* logits \[B, n_class"):
        train(config, data, progress=False)
    markov = markov_language(vocab_size=6, seq_len=4, n_train=4)
    with pytest.raises(
        BasinscopeError, match=r"returned shape \(2, 6\) .* \[B, T=4, n_classes=6\]"
    ):
        train(_cfg(model_kwargs={**TINY, "readout": "last"}, steps=1), markov, progress=False)
    bad = dataclasses.replace(markov, x_train=markov.x_train + 6)
    with pytest.raises(
        BasinscopeError, match="x_train holds the token id 11; give token ids below"
    ):
        train(_cfg(steps=1), bad, progress=False)
    labels = dataclasses.replace(markov, y_train=markov.y_train - 7)
    with pytest.raises(BasinscopeError, match=r"y_train holds labels outside \[0, 6\).* or -100"):
        train(_cfg(steps=1), labels, progress=False)


USER_MODULE = "basinscope_test_token_models"


def test_a_kwargs_factory_gets_no_vocab_size(tmp_path, monkeypatch):
    code = """
        from torch import nn

        class Bag(nn.Module):
            def __init__(self, n_classes, **kwargs):
                super().__init__()
                assert "vocab_size" not in kwargs and "readout" not in kwargs
                self.emb = nn.EmbeddingBag(7, n_classes)

            def forward(self, x):
                return self.emb(x)

        def make(n_classes, **kwargs):
            return Bag(n_classes, **kwargs)
    """
    (tmp_path / f"{USER_MODULE}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, USER_MODULE, raising=False)
    try:
        config = _cfg(model=f"{USER_MODULE}:make", model_kwargs={}, steps=20, lr=0.05)
        result = train(config, modular_arithmetic(p=5), progress=False)
        assert result.final["train_loss"] < result.history[0]["train_loss"]
    finally:
        sys.modules.pop(USER_MODULE, None)
