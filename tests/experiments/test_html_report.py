"""report.html: the study's numbers in the page, offline, and drawn by a real browser."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import basinscope as bs
from basinscope import plots
from basinscope.cli import main as cli_main
from basinscope.experiments import html_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _browser import REPORT_DONE, Browser, find_chromium  # noqa: E402


@pytest.fixture(scope="module")
def demo(small_lr_batch) -> Path:
    return small_lr_batch[0]


def _figures(path: Path) -> list[dict]:
    text = path.read_text()
    block = re.search(r'<script type="application/json" id="bs-figures">(.*?)</script>', text, re.S)
    return json.loads(block.group(1).replace("<\\/", "</"))


def _rows(root: Path) -> dict[str, dict]:
    with (root / "summary.csv").open() as fh:
        return {r["run"]: r for r in csv.DictReader(fh)}


def test_report_holds_the_study_numbers(demo):
    page = demo / "report.html"
    text = page.read_text()
    assert text.count("window.Plotly = Plotly") == 1  # plotly.js embedded once
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text)  # nothing loaded
    figs = _figures(page)
    runs = list(json.loads((demo / "study.json").read_text())["runs"])
    surfaces = {r: bs.Surface.load(demo / r / "surface.h5") for r in runs}
    # 3-D: every run, train and test, on one range = the union of both keys' common ranges
    three_d = next(f for f in figs if f["data"][0]["type"] == "surface")
    zr = plots.common_zrange(surfaces.values())
    zt = plots.common_zrange(surfaces.values(), key="test_loss")
    lo, hi = min(zr[0], zt[0]), max(zr[1], zt[1])
    assert [t["name"] for t in three_d["data"]] == runs * 2
    for t in three_d["data"]:
        key = "train_loss" if t["scene"] == "scene" else "test_loss"
        z = getattr(surfaces[t["name"]], key)
        np.testing.assert_allclose(np.array(t["customdata"], float), z.T, rtol=1e-5)
        np.testing.assert_allclose(np.array(t["z"], float), np.minimum(z, hi).T, rtol=1e-5)
        assert (t["cmin"], t["cmax"]) == (lo, hi)
    # contours: the star sits on the grid's lowest point of each run
    contour = next(f for f in figs if f["data"][0]["type"] == "contour")
    stars = [t for t in contour["data"] if t.get("marker", {}).get("symbol") == "star"]
    for star, run in zip(stars, runs, strict=True):
        s = surfaces[run]
        i, j = np.unravel_index(np.argmin(s.train_loss), s.shape)
        assert (star["x"][0], star["y"][0]) == (s.xcoordinates[i], s.ycoordinates[j])
    # bars: the summary's numbers, the noise sharpness with its standard error
    rows = _rows(demo)
    bars = {
        f["layout"]["title"]["text"]: f["data"][0] for f in figs if f["data"][0]["type"] == "bar"
    }
    noise = next(v for k, v in bars.items() if k.startswith("Gaussian"))
    for run, y, e in zip(noise["x"], noise["y"], noise["error_y"]["array"], strict=True):
        assert y == pytest.approx(float(rows[run]["noise_sharpness"]), rel=1e-5)
        assert e == pytest.approx(float(rows[run]["noise_sharpness_se"]), rel=1e-5)
    lam = next(v for k, v in bars.items() if k.startswith("largest Hessian"))
    assert lam["y"] == pytest.approx([float(rows[r]["lambda_max"]) for r in lam["x"]], rel=1e-5)
    # the spectral density from the stored quadrature integrates to one
    spectrum = next(f for f in figs if "eigenvalue density" in f["layout"]["title"]["text"])
    for t in spectrum["data"]:  # ∫φ = 1 and ∫tφ = tr H / n, the quadrature's own estimate
        saved = json.loads((demo / t["name"] / "spectrum.json").read_text())
        x, y = np.array(t["x"]), np.array(t["y"])
        assert np.trapezoid(y, x) == pytest.approx(1.0, abs=1e-3)
        mean = saved["trace_estimate"] / saved["n"]  # to 1e-4 of the axis (5-digit densities)
        assert np.trapezoid(x * y, x) == pytest.approx(mean, abs=1e-4 * np.ptp(x))
    # interpolation lines equal their files; the gap scatter has one point per run
    for label in ("high-lr", "low-lr"):
        s = bs.Surface.load(demo / f"interpolation_{label}.h5")
        line = next(f for f in figs if f["layout"]["title"]["text"].startswith(f"{label}:"))
        np.testing.assert_allclose(line["data"][0]["y"], s.train_loss, rtol=1e-5)
    scatter = next(f for f in figs if "against the gap" in f["layout"]["title"]["text"])
    assert all(len(t["x"]) == len(runs) for t in scatter["data"])
    assert "Which measure tracks the generalisation gap" in text  # summary.md, rendered
    assert "<table>" in text and "What differs between the runs" in text


def test_volume_and_dataset_size_sections(tmp_path):
    """A dataset-size study's files (volumes with intervals, cross-landscape matrix, the
    power-law fit, Fan et al.'s two planes) become their figures."""
    root = tmp_path / "dataset-size"
    runs = {"size-0.1": {}, "size-1": {}}
    for i, run in enumerate(runs):
        (root / run).mkdir(parents=True)
        (root / run / "volume.json").write_text(
            json.dumps({"log_volume": -3.0 + i, "ci": [-4.0 + i, -2.5 + i]})
        )
    (root / "study.json").write_text(json.dumps({"name": "dataset-size", "runs": runs}))
    (root / "cross_landscape.json").write_text(
        json.dumps({"rows": list(runs), "cols": list(runs), "log_volume": [[-3.0, float("nan")], [-2.5, -2.0]]})
    )  # fmt: skip
    fit = {
        "slope": 0.5,
        "intercept": -4.0,
        "r2": 1.0,
        "sizes": [100, 1000],
        "log_volume": [-3.0, -2.0],
    }
    (root / "fit.json").write_text(json.dumps(fit))
    x = np.linspace(-1, 1, 4)
    for tag, scale in (("", 1.0), ("_smallest", 3.0)):
        z = scale * (x[:, None] ** 2 + x[None, :] ** 2)
        bs.Surface(x, x, train_loss=z, computed=np.ones_like(z, bool),
                   attrs={"marks": [["a", [0.0, 0.0]], ["b", [1.0, 0.0]]]}).save(
            root / f"plane_three_sizes{tag}.h5")  # fmt: skip
    figs = _figures(html_report(root))
    vol = next(f["data"][0] for f in figs if f["layout"]["title"]["text"].startswith("log basin"))
    assert vol["y"] == [-3.0, -2.0]
    assert vol["error_y"]["array"] == [0.5, 0.5] and vol["error_y"]["arrayminus"] == [1.0, 1.0]
    heat = next(f["data"][0] for f in figs if f["data"][0]["type"] == "heatmap")
    assert heat["z"] == [[-3.0, None], [-2.5, -2.0]] and heat["text"][0][1] == "n/a"
    line = next(f for f in figs if "against training-set size" in f["layout"]["title"]["text"])
    assert line["data"][1]["y"] == pytest.approx(
        [-4.0 + 0.5 * math.log(s) for s in fit["sizes"]], rel=1e-5
    )
    planes = next(f for f in figs if "Fan et al." in f["layout"]["title"]["text"])
    assert planes["layout"]["coloraxis"]["cmax"] == pytest.approx(6.0)  # one scale, both panels
    assert [t["text"][0] for t in planes["data"] if t.get("mode") == "markers+text"] == [
        "a",
        "b",
    ] * 2


def test_report_command_and_unreadable_files(demo, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(demo, root)
    (root / "report.html").unlink()
    (root / "low-lr_large-batch" / "surface.h5").write_bytes(b"not hdf5")
    assert cli_main(["report", str(root)]) in (0, None)
    out = capsys.readouterr().out
    assert "report.html" in out and "MB" in out
    text = (root / "report.html").read_text()
    assert "Files that could not be read" in text and "low-lr_large-batch/surface.h5" in text
    three_d = next(f for f in _figures(root / "report.html") if f["data"][0]["type"] == "surface")
    assert "low-lr_large-batch" not in {t["name"] for t in three_d["data"]}
    other = tmp_path / "elsewhere.html"
    assert cli_main(["report", str(root), "--html", str(other)]) in (0, None)
    assert 'href="copy/figures/' in other.read_text()  # the PNG links still point at them
    (root / "study.json").unlink()  # not a study directory: the correlations only
    assert cli_main(["report", str(root)]) in (0, None)
    assert "no study.json" in capsys.readouterr().out
    assert cli_main(["report", str(root), "--html", str(other)]) == 2
    err = capsys.readouterr().err
    assert "has no study.json" in err and "Traceback" not in err


def test_report_in_headless_chromium(demo):
    """Every figure drawn (the WebGL scenes with pixels of the colour scale), no request
    but the page itself, no JavaScript error or console error."""
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium is missing in CI: make test installs it (apt-get install chromium)"
            )
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    from PIL import Image

    with Browser() as browser:
        page = browser.open(demo / "report.html")
        state = page.wait(REPORT_DONE, 120) and page.evaluate("window.basinscopeReport")
        assert state and state["failed"] == [] and state["drawn"] == state["total"] >= 10
        plots_info = page.evaluate(
            """Array.from(document.querySelectorAll('.plot')).map(d => ({
                 plotly: d.classList.contains('js-plotly-plot'),
                 traces: d.data ? d.data.length : 0, full: d._fullData ? d._fullData.length : -1,
                 svg: d.querySelectorAll('g.trace').length,
                 gl: Array.from(d.querySelectorAll('.gl-container canvas')).map(c => {
                   const r = c.getBoundingClientRect();
                   return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height};
                 })}))"""
        )
        assert len(plots_info) == state["total"]
        for p in plots_info:
            assert p["plotly"] and p["traces"] == p["full"] > 0
            assert p["svg"] > 0 or p["gl"]
        scenes = [c for p in plots_info for c in p["gl"]]
        assert len(scenes) >= 2  # train and test
        time.sleep(0.5)
        for c in scenes:
            shot = page.screenshot({"x": c["x"], "y": c["y"], "width": c["w"], "height": c["h"]})
            rgb = np.asarray(Image.open(__import__("io").BytesIO(shot)).convert("RGB"), int)
            coloured = (rgb.max(-1) - rgb.min(-1)) > 60  # viridis, not the white page or grey axes
            assert coloured.mean() > 0.05, "a WebGL surface was not drawn"
        assert page.requests == [(demo / "report.html").resolve().as_uri()]
        assert page.errors == []
