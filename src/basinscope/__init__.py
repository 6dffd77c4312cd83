"""basinscope: measure and draw the geometry of neural-network loss landscapes."""

from __future__ import annotations

__version__ = "0.1.0"
