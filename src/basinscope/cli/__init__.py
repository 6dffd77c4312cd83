"""The ``basinscope`` command line. It only parses arguments and calls the library.

``_parser`` assembles the top-level parser; each group of commands adds its own
sub-parser: ``_study`` (run, report, plot), ``_train`` (train), ``_measure``
(surface, sharpness, hessian, volume), ``_paths`` (path), ``_trajectory``
(trajectory) and ``_export`` (export). ``_common`` holds what they share:
argument types, loading a checkpoint, ``--json``, errors.

Every promise of the command line, under any input:

* Bad input ends with one sentence on stderr and exit status 2, no traceback:
  argparse's own errors, a :class:`BasinscopeError` from the library (a lock
  held by another process included), an ``OSError`` while writing (disk full,
  permission) and running out of memory.
* Checks come before the work: every number is parsed by a type that refuses
  non-integers, NaN and ±inf (no option of ours means anything by them), and
  every output (``--out``, ``--json``, ``--density``, the figures) is checked to
  be writable before anything is computed.
* Opening a run directory runs no code unless ``--trust-code`` says so, and a
  checkpoint is only evaluated on data of the shape it was trained on.
* Ctrl-C says what is true for the command: which finished work is saved and
  resumed by a rerun, or that nothing was saved.
* Every ``--json`` payload records the environment it was computed in.
"""

from ._parser import build_parser as build_parser
from ._parser import main as main

__all__ = ["build_parser", "main"]
