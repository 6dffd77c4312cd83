# make demo  — set up .venv (CPU torch first) and run the main study
# make test  — set up .venv and run the test suite
# make bench — run the benchmarks against the baseline libraries
# make lint  — ruff check + ruff format --check

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint clean chromium

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[test,bench]"
	touch $(STAMP)

demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg $(VENV)/bin/basinscope run

test: $(STAMP) chromium
	OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg $(PY) -m pytest

# The report's browser test opens report.html in Debian's chromium (headless): installed
# here when it is missing and we may (root with apt-get, as in CI); otherwise it is skipped
# outside CI and fails in CI.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed: the browser test is skipped (apt-get install -y chromium)"; fi; }

bench: $(STAMP)
	$(PY) benchmarks/surface.py
	$(PY) benchmarks/volume.py
	$(PY) benchmarks/hessian.py
	$(PY) benchmarks/transformer.py
	$(PY) benchmarks/distributed.py
	$(PY) benchmarks/policy.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) results
