# Set-up and everyday commands. `make run` reproduces the default; `make test` tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: run test test-fast lint bench bench-latency bench-gpu data install bytecode clean

run: install data bytecode   ## create the venv, install, run the default workflow
	HF_HUB_OFFLINE=1 $(BIN)/snakemake --cores all

# One pytest worker per core; tests sharing a module fixture run on one worker, which builds
# it once (tests/conftest.py), the rest are dealt out one by one. The slowest are printed.
PYTEST := HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadgroup --durations=15

test: install data bytecode  ## the whole test suite (CI runs exactly this)
	$(PYTEST)

test-fast: install data bytecode ## everything but the tests marked slow (real workflow runs)
	$(PYTEST) -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

bench: install data          ## benchmarks print figures; they assert nothing
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/latency_bench.py
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/scoring_cost.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/job_startup.py

bench-latency: install data  ## the latency rule 4 times on the default run: do medians agree?
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/latency_repeat.py --runs 4

bench-gpu: install data      ## on a CUDA node: images/s per stage in fp32 vs AMP, and latency
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/gpu_bench.py

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[workflow,dev]"
	$(MAKE) --no-print-directory bytecode
	touch $@

# An editable install leaves idap uncompiled, and where PYTHONDONTWRITEBYTECODE is set every
# workflow job would compile it again (~0.5 s of each job's ~5 s). A stale file is only
# recompiled in memory: never wrong, at worst that slow again; `make bytecode` refreshes.
bytecode:
	$(BIN)/python -m compileall -q idap examples

# Fashion-MNIST offline: Debian ships it. Never a password prompt: apt runs only as root or
# with password-less sudo; otherwise the download rule fetches it (torchvision) when online.
data:
	@if [ -d $(FMNIST) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then APT=""; \
	elif [ "$$(id -u)" = 0 ]; then APT="apt-get"; \
	elif sudo -n true 2>/dev/null; then APT="sudo -n apt-get"; else APT=""; fi; \
	if [ -n "$$APT" ] && $$APT update -qq && $$APT install -y -qq dataset-fashion-mnist; then exit 0; fi; \
	echo "note: Fashion-MNIST is not in $(FMNIST) and Debian's dataset-fashion-mnist could not be installed without a password; the download rule fetches it online, or place its four *-ubyte.gz files in resources/datasets/fashion_mnist/FashionMNIST/raw/"

clean:
	rm -rf results logs .snakemake report.html
