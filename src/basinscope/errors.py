"""The one exception type a user of basinscope sees for bad input.

Every check on user input raises :class:`BasinscopeError` with one sentence
that names the offending value and says what would be accepted. The CLI turns
it into that sentence on stderr and exit status 2, with no traceback.
"""

from __future__ import annotations


class BasinscopeError(ValueError):
    """Bad input to basinscope: the message is one sentence meant for the user."""
