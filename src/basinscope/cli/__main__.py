"""``python -m basinscope.cli``: the command line (exit status passed through)."""

import sys

from ._parser import main

if __name__ == "__main__":
    sys.exit(main())
