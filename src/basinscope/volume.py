"""Transitional: ``basinscope.volume`` moved to :mod:`basinscope.landscape`.

This name is the implementation module itself (``sys.modules`` alias), so every
name, private ones included, and every ``monkeypatch`` on it (``volume._search``)
reach the code.
"""

import sys

from .landscape import _volume

sys.modules[__name__] = _volume
