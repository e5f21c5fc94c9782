# Two commands on a fresh machine:
#   make demo   set up, then run the main job (SMP-S pruning of the real MiniLM on SST-2, 2 ranks)
#   make test   set up, then run the test suite (everything, as CI runs it)
# `make test-fast` runs the unit tests and the quicker distributed tests (not `slow`, not `e2e`: no SLURM,
# no real MiniLM, no launcher runs), a few minutes. `make setup` alone creates .venv with everything
# installed; `make slurm` installs SLURM and munge (system packages, as root) for the tests that run the job
# scripts on a one-node cluster; without root it says so and those tests skip.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: a bare "torch" requirement would pull the CUDA builds (several GB).
TORCH_SPEC ?= torch==2.13.0
NUM_RANKS ?= 2
# make test runs the suite on two pytest-xdist workers: a third of a one-worker run's time the cores sat idle
# (SLURM jobs starting, ranks waiting on each other). Each module runs whole on one worker (tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: setup slurm demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -e ".[test,bench,weights]"
	# The C++ ops runs build on first use, built now: a rank killed while building one leaves a lock
	# that every later launch would wait on (see sparse_dist/distributed/ops.py).
	$(BIN)/python -m sparse_dist.distributed.ops
	touch $@

setup: $(VENV)/.installed

# Not root and SLURM missing: a message, no failure, so `make test` still runs everything else.
slurm:
	@if command -v sbatch >/dev/null && PATH="$$PATH:/usr/sbin" command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "make slurm: slurm-wlm and munge are missing and installing them needs root; the SLURM tests will skip"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; fi

demo: setup
	$(BIN)/deepspeed --num_gpus $(NUM_RANKS) launch/train.py --config configs/smp_minilm_sst2.yaml

test: setup slurm
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# The tiers are marks (pyproject.toml, tests/README.md); the `slow` and `e2e` tests run only under `make test`.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not e2e"

lint: setup
	$(BIN)/ruff check sparse_dist launch tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
