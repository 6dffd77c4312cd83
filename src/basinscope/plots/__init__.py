"""plots: figures of loss surfaces and sharpness rankings, written as PNG files.

Every function draws on its own :class:`matplotlib.figure.Figure` with an Agg
canvas and never touches ``matplotlib.pyplot``: importing or calling this
module does not change the user's backend, create pyplot figures, or leak
memory through pyplot's figure manager. Files are written atomically (temp
file + rename) so a reader never sees a half-written PNG.

The pictures follow Li et al. 2018, "Visualizing the Loss Landscape of Neural
Nets": 1-D slices with accuracy on a twin axis, 2-D contour maps and 3-D
surfaces of ``L(θ0 + α d1 + β d2)``. Arrays are indexed ``[i, j]`` at
``(x[i], y[j])``. Points not yet computed (or diverged) are ``NaN`` and are
masked, so a partially computed grid can be drawn while it is still running;
such a figure says so in its title ("partial: k of n points") and a contour map
then marks no minimum (the lowest computed point is not the surface's minimum).
Surfaces, contour maps and grids draw the loss on a linear scale by default, on
one clipped z-range shared by the runs of a study (:func:`common_zrange`; values
above the clip level are a flat plateau, :func:`drawn_z` is the drawn array); a
log scale is an option (``log=True``), labelled ``log10``. 1-D lines and charts
still choose a log axis when their values span more than two decades.

This wing reads landscape results (:class:`~basinscope.landscape.Surface`) and
plain numbers only: ``_style`` (the look and the pyplot-free plumbing),
``_surfaces`` (lines, contours, 3-D surfaces), ``_grids`` (runs side by side),
``_spread`` (the slices of several direction seeds) and ``_charts`` (bars, heat
maps, lines of numbers, scatter plots); ``_vtk`` writes a
surface as a VTK mesh (``.vtu`` or legacy ``.vtk``, via meshio) for ParaView.
The interactive report's figures are plotly specifications (``_web_surfaces``,
``_web_charts``) that ``_html.write_html`` draws in one offline page with
plotly.js embedded once.
"""

from ._charts import plot_bars as plot_bars
from ._charts import plot_matrix as plot_matrix
from ._charts import plot_scatter as plot_scatter
from ._charts import plot_xy as plot_xy
from ._grids import plot_grid as plot_grid
from ._html import write_html as write_html
from ._spread import plot_spread as plot_spread
from ._style import CMAP as CMAP
from ._style import DPI as DPI
from ._style import choose_log_scale as choose_log_scale
from ._style import common_limits as common_limits
from ._style import common_zrange as common_zrange
from ._style import drawn_z as drawn_z
from ._surfaces import plot_contour as plot_contour
from ._surfaces import plot_line as plot_line
from ._surfaces import plot_surface_3d as plot_surface_3d
from ._training import accuracy_jump as accuracy_jump
from ._training import plot_along as plot_along
from ._training import plot_training as plot_training
from ._vtk import export_vtk as export_vtk
from ._web_charts import bars as bars
from ._web_charts import curves as curves
from ._web_charts import heatmap as heatmap
from ._web_charts import scatters as scatters
from ._web_charts import xy as xy
from ._web_surfaces import contours as contours
from ._web_surfaces import lines as lines
from ._web_surfaces import surfaces_3d as surfaces_3d

__all__ = [
    "CMAP",
    "DPI",
    "accuracy_jump",
    "bars",
    "contours",
    "curves",
    "heatmap",
    "lines",
    "scatters",
    "surfaces_3d",
    "write_html",
    "xy",
    "choose_log_scale",
    "common_limits",
    "common_zrange",
    "drawn_z",
    "export_vtk",
    "plot_along",
    "plot_bars",
    "plot_contour",
    "plot_grid",
    "plot_line",
    "plot_matrix",
    "plot_scatter",
    "plot_spread",
    "plot_surface_3d",
    "plot_training",
    "plot_xy",
]
