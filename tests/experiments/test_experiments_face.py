"""The experiments and plots wings: their contracts, and that importing them (and the
package) stays light: no matplotlib until a figure is drawn."""

from __future__ import annotations

import subprocess
import sys

import basinscope.experiments as ex
import basinscope.plots as plots


def test_every_exported_name_exists():
    for module in (ex, plots):
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, (module.__name__, missing)


def test_the_built_in_studies_are_named():
    assert list(ex.STUDIES) == [
        "lr-batch", "dataset-size", "poison", "remedies", "sam-vs-sgd", "lr-batch-grid",
        "grokking", "warmup", "policy",
    ]  # fmt: skip
    for name, build in ex.STUDIES.items():
        study = build()
        assert isinstance(study, ex.Study) and study.name == name
        assert set(study.measures) <= set(ex.MEASURES)


def test_importing_experiments_loads_no_matplotlib():
    code = (
        "import sys, basinscope, basinscope.experiments, basinscope.training\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
