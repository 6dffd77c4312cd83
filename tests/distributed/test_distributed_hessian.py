"""Two gloo ranks give one process's curvature (the hessian wing under torch.distributed).

One start of two ranks runs ``scenarios.hessian`` (about 5 s a start), compared with
the same scenario run here in one process with one thread. Bit-identical: what is
point-parallel (Hutchinson and Hutch++ probe values, SLQ nodes and weights, the
partial-results files rank 0 wrote, a summary's deflated probe values given a fixed
basis). To rounding (float64, 1e-12 relative): what Lanczos builds from data-parallel
products (eigenvalues at both ends, the GGN's, a summary, whose probes are deflated by
its Lanczos basis), and a trace on a data-parallel operator passed as such.
"""

from __future__ import annotations

import json

import numpy as np
import scenarios
from _ranks import run_ranks


def _close(a, b, scale=None, rtol=1e-12) -> None:
    """Equal to ``rtol`` relative to ``scale`` (default: the largest ``|b|``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max() if scale is None else scale
    assert a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=rtol * scale), (a, b)


def _same_trace(a, b) -> None:
    assert np.array_equal(a.samples, b.samples), (a.samples, b.samples)
    for key in ("value", "exact", "n_products", "converged"):
        assert getattr(a, key) == getattr(b, key), key


def test_curvature_probes_exact_and_lanczos_to_rounding(tmp_path, one_thread):
    ranks = run_ranks("hessian", tmp_path)
    here = tmp_path / "one"
    here.mkdir()
    ref = scenarios.hessian(here)
    for got in ranks:
        # point-parallel: every probe and run is one process's, bit for bit
        _same_trace(got["hutchinson"], ref["hutchinson"])
        assert ref["hutchinson"].converged and len(ref["hutchinson"].samples) % 2  # mid-round
        _same_trace(got["hutch++"], ref["hutch++"])
        for key in ("nodes", "weights", "density", "grid"):
            a, b = getattr(got["density"], key), getattr(ref["density"], key)
            assert np.array_equal(a, b, equal_nan=True), key
        # data-parallel products: Lanczos to rounding, with the same decisions
        for key in ("top", "bottom", "ggn"):
            _close(got[key], ref[key])
        assert got["products"] == ref["products"]
        s, r = got["summary"], ref["summary"]
        for key in ("lambda_max", "lambda_min", "top_k", "trace", "trace_se"):
            _close(s[key], r[key], r["lambda_max"])
        assert (s["n_products"], s["trace_probes"]) == (r["n_products"], r["trace_probes"])
        for name, layer in r["per_layer"].items():
            for key in ("lambda_max", "lambda_min", "trace", "trace_se"):  # λ_min may be 0
                _close(s["per_layer"][name][key], layer[key], layer["lambda_max"])
            assert s["per_layer"][name]["n_products"] == layer["n_products"], name
        # the summary's probes are point-parallel, deflated by the data-parallel Lanczos
        # basis (so to rounding); given a fixed basis they are one process's bit for bit
        t, u = got["summary_trace"], ref["summary_trace"]
        _close(t.samples, u.samples)
        _close([t.value, t.exact, t.stderr], [u.value, u.exact, u.stderr], r["lambda_max"])
        _same_trace(got["given"], ref["given"])
        assert ref["given"].converged and len(ref["given"].samples) % 2  # mid-round
        # each rank freed the data-parallel operators before building one to probe
        assert got["freed"] == [True] * (1 + len(r["per_layer"]))
        _close(got["shared"].samples, ref["shared"].samples)
    assert ref["freed"] == []  # one process probes on its Lanczos operator
    # the ranks agree exactly, data-parallel results included
    a, b = ranks
    for key in ("top", "bottom", "ggn", "residuals"):
        assert np.array_equal(a[key], b[key]), key
    assert a["summary"] == b["summary"]
    _same_trace(a["summary_trace"], b["summary_trace"])
    assert np.array_equal(a["shared"].samples, b["shared"].samples)
    # rank 0 wrote the partial files; those of the point-parallel measures are one
    # process's to the byte (the probe after the stopping one is not stored)
    for name in ("probes.json", "slq.json"):
        assert (tmp_path / name).read_text() == (here / name).read_text(), name
    stored = json.loads((tmp_path / "probes.json").read_text())["items"]
    assert len(stored) == len(ref["hutchinson"].samples)
    shared = json.loads((tmp_path / "shared.json").read_text())["items"]
    _close([shared[str(i)] for i in range(len(shared))], ref["shared"].samples)
