"""Transitional: ``basinscope.directions`` moved to :mod:`basinscope.landscape`.

This name is the implementation module itself (``sys.modules`` alias), so every
name, private ones included, and every ``monkeypatch`` on it reach the code.
"""

import sys

from .landscape import _directions

sys.modules[__name__] = _directions
