# Set-up and everyday commands. `make run` reproduces the default; `make test` tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: run test lint bench bench-latency data install clean

run: install data            ## create the venv, install, run the default workflow
	HF_HUB_OFFLINE=1 $(BIN)/snakemake --cores all

test: install data           ## the whole test suite (CI runs exactly this)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

bench: install data          ## benchmarks print figures; they assert nothing
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/latency_bench.py
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/scoring_cost.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/startup.py

bench-latency: install data  ## the latency rule 4 times on the default run: do medians agree?
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/latency_repeat.py --runs 4

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[workflow,dev]"
	touch $@

# Fashion-MNIST offline: Debian ships it. Online, torchvision downloads it instead.
data:
	@test -d $(FMNIST) || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "note: dataset-fashion-mnist not installed; the download rule will try torchvision's download"

clean:
	rm -rf results logs .snakemake report.html
