"""``python -m basinscope``: the command line (exit status passed through)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
