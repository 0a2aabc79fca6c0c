# Two entry points (see README): `make demo` runs the main job, `make test` runs every test.
# Both create and fill the project-local virtualenv .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/blackbox optimize --objective logistic --dim 1000 --optimizer spsa-gc \
		--budget 20000 --seed 0 --run-dir runs/demo-$$(date +%Y%m%d-%H%M%S) --progress --json

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/optimizers.py --write-docs
	$(PY) bench/overhead.py --write-docs

clean:
	rm -rf $(VENV) build dist *.egg-info runs
