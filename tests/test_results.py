"""``_results.to_json``: the one way a result dataclass becomes JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from basinscope._results import to_json


@dataclass(frozen=True)
class _Inner:
    values: np.ndarray
    label: str = "inner"


@dataclass(frozen=True)
class _Result:
    value: float
    samples: np.ndarray
    argmax: tuple[float, ...]
    inner: _Inner
    per: dict[str, float] = field(default_factory=dict)


def test_to_json_turns_arrays_into_lists_and_keeps_nan():
    r = _Result(
        value=math.nan,
        samples=np.array([[1.0, np.nan], [2.5, np.inf]]),
        argmax=(0.25, -0.5),
        inner=_Inner(np.arange(3)),
        per={"lr": 0.5, "batch": math.nan},
    )
    out = to_json(r)
    assert list(out) == ["value", "samples", "argmax", "inner", "per"]
    assert math.isnan(out["value"]) and isinstance(out["value"], float)
    assert out["samples"][0][0] == 1.0 and math.isnan(out["samples"][0][1])
    assert out["samples"][1] == [2.5, math.inf]
    assert out["argmax"] == (0.25, -0.5)
    assert out["inner"] == {"values": [0, 1, 2], "label": "inner"}
    assert out["per"]["lr"] == 0.5 and math.isnan(out["per"]["batch"])
    # JSON round trip: NaN is written as NaN and read back as a float NaN
    back = json.loads(json.dumps(out))
    assert math.isnan(back["value"]) and back["inner"]["values"] == [0, 1, 2]


def test_to_json_is_what_a_study_stored_before():
    """The study's former ``_asdict`` (``dataclasses.asdict`` + top-level arrays as lists)
    and ``dataclasses.asdict`` of the correlation rows give the same JSON text."""
    import dataclasses

    from basinscope.experiments import Correlation
    from basinscope.sharpness import NoiseSharpness

    noise = NoiseSharpness(0.1, 0.01, 0.05, 3, 0.2, np.array([0.1, 0.2, 0.0]), False, 0)
    old = {
        k: (v.tolist() if isinstance(v, np.ndarray) else v)
        for k, v in dataclasses.asdict(noise).items()
    }
    assert json.dumps(to_json(noise), sort_keys=True) == json.dumps(old, sort_keys=True)
    c = Correlation("lambda_max", "gap_loss", 0.5, 0.1, 9, math.nan, {"lr": 0.25})
    assert json.dumps(to_json(c)) == json.dumps(dataclasses.asdict(c))


@pytest.mark.parametrize("bad", [{"a": 1}, 3.0, _Result])
def test_to_json_refuses_what_is_not_a_dataclass_instance(bad):
    with pytest.raises(TypeError, match="dataclass instance"):
        to_json(bad)
