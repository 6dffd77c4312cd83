"""One self-contained, offline HTML page of text and interactive figures.

:func:`write_html` writes HTML blocks and plotly figures (the dicts of
:mod:`._web_charts` and :mod:`._web_surfaces`) into one file: plotly.js (from
the ``plotly`` package, which ships it) is embedded once, the figures as one
JSON block, and nothing is loaded from anywhere else — the page opens from a
mail attachment or a laptop without network and makes no request.

The page records what it drew in ``window.basinscopeReport = {total, drawn,
failed}`` (a figure that plotly.js could not draw is also shown as a red
message in its place), which the browser test reads.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ..errors import BasinscopeError

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 0 24px 48px; color: #1d1d1f; line-height: 1.45; }
h1 { margin-top: 28px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.plot { width: 100%; margin: 12px 0; }
.failed { color: #b00020; border: 1px solid #b00020; padding: 8px; }
.note { color: #555; font-size: 14px; }
code { background: #f3f3f3; padding: 0 3px; }
"""

_DRAW = """
(function () {
  var figures = JSON.parse(document.getElementById("bs-figures").textContent);
  var state = {total: figures.length, drawn: 0, failed: []};
  window.basinscopeReport = state;
  var config = {responsive: true, displaylogo: false};
  figures.forEach(function (fig, i) {
    var div = document.getElementById("bs-fig-" + i);
    function fail(err) {
      state.failed.push({figure: i, error: String(err && err.message || err)});
      div.insertAdjacentHTML("beforeend",
        '<p class="failed">This figure could not be drawn: ' + String(err) + "</p>");
    }
    try {
      Plotly.newPlot(div, fig.data, fig.layout, config).then(function () {
        state.drawn += 1;
      }, fail);
    } catch (err) { fail(err); }
  });
})();
"""


def plotly_js() -> str:
    """plotly.js as the ``plotly`` Python package ships it (minified)."""
    try:
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise BasinscopeError(
            "the HTML report needs the plotly package (it ships plotly.js); "
            "install it with pip install plotly"
        ) from exc


def _script(text: str) -> str:
    """``text`` safe inside a ``<script>`` element (no ``</script>`` can end it early)."""
    return text.replace("</", "<\\/")


def write_html(path: str | Path, title: str, blocks: Sequence[str | dict[str, Any]]) -> Path:
    """Write ``blocks`` — HTML strings and plotly figures ``{"data", "layout"}`` — as one
    self-contained page with plotly.js embedded once; returns the path (written
    atomically)."""
    body, figures = [], []
    for block in blocks:
        if isinstance(block, str):
            body.append(block)
        else:
            body.append(f'<div class="plot" id="bs-fig-{len(figures)}"></div>')
            figures.append(block)
    data = json.dumps(figures, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n"
        f"<script>{plotly_js()}</script>\n</head>\n<body>\n"
        + "\n".join(body)
        + f'\n<script type="application/json" id="bs-figures">{_script(data)}</script>\n'
        f"<script>{_DRAW}</script>\n</body>\n</html>\n"
    )
    path = Path(path)
    atomic_write_text(path, page)
    return path
