# Set-up and the two entry points of README: `make demo` (the main job) and `make test`.
# `make demo` writes the synthetic videos and still faces if absent, then runs the frozen_heads
# grid (stage 1 on the stills, the frozen encoder's features cached, eight heads x 3 seeds on
# them) and the frozen_heads sweep on the same features.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= data/synthetic

.PHONY: install postgres tex demo test lint format bench bench-page clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

postgres:  # the Debian package, for the tests' real PostgreSQL server (no-op when present)
	.ci/install-postgres

tex:  # Debian's texlive and poppler, for the test that compiles the LaTeX tables (no-op when present)
	.ci/install-tex

demo: install
	$(BIN)/affbench ablate ablations/configs/frozen_heads.yaml --synth-if-missing --workers 2
	$(BIN)/affbench sweep sweeps/configs/frozen_heads.yaml --synth-if-missing
	@echo; echo "The heads grid (ablations/results/frozen_heads), again below the sweep's output:"
	@$(BIN)/affbench table ablations/results/frozen_heads --metric val/va_ccc

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint postgres tex
	$(BIN)/pytest

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark writes its figures with their conditions to results/<benchmark>-<machine>.csv
# (this machine's file replaced, other machines' kept); BENCHMARKS.md is generated from them.
bench: install
	$(BIN)/affbench data bench-index --format md
	$(BIN)/affbench data bench-loader $(DATA) --format md
	$(BIN)/affbench bench-learning --format md
	$(BIN)/affbench bench-stage1 --format md
	$(BIN)/affbench bench-stage1-seeds --format md
	$(BIN)/affbench bench-features --format md
	$(BIN)/affbench bench-efficiency zoo --format md
	$(BIN)/affbench bench-efficiency growth --format md
	$(BIN)/affbench bench-efficiency overhead --format md
	$(BIN)/affbench bench-sweep --format md
	$(BIN)/affbench bench-grid --format md
	$(MAKE) bench-page

bench-page: install
	$(BIN)/affbench bench-page

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
