# Targets a researcher uses. `make run` and `make test` work as the first command in a fresh
# clone: they set up the project's own virtual environment (.venv) when it is missing or older
# than pyproject.toml, then run. Nothing is installed into the system interpreter.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BOOTSTRAP_PYTHON ?= python3
# the venv is up to date when this stamp is newer than pyproject.toml
INSTALLED := $(VENV)/.installed
ENVS ?= Hopper-v5
BENCH_FLAGS ?=
TEST_FLAGS ?=
ARGS ?=

.PHONY: install venv run test test-fast bench datasets clean-datasets mlflow-ui analysis

# torch from the local CPU wheel through pip (uv does not look there and would download a CUDA
# build); the rest through uv, faster than pip when measured side by side (docs/setup.md)
$(INSTALLED): pyproject.toml
	@echo "make: setting up $(VENV) (missing, or older than pyproject.toml): the CPU torch wheel, then"
	@echo "      this package with its dev and Adroit extras into it: 1.7 GB, several minutes (docs/setup.md)"
	@test -x $(PYTHON) || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q uv
	$(VENV)/bin/uv pip install -q --python $(PYTHON) -e '.[dev,adroit,video]'
	@touch $(INSTALLED)

venv: $(INSTALLED)  ## only set up .venv (what run and test do first)

install:  ## (re)install into .venv: the CPU torch wheel (pip), then this package with its extras (uv)
	@rm -f $(INSTALLED)
	@$(MAKE) --no-print-directory venv

run: $(INSTALLED)  ## the paper's method: TD3+BC with Algorithm 1 pre-training on local Hopper medium (~10 min once the data exist; ARGS="seed=1" adds overrides)
	$(PYTHON) -m offline_rl.first_run $(ARGS)

# tests run in parallel workers, one per core (pytest-xdist; the SLURM tests share one worker);
# a third worker on 2 cores gained nothing measurable (docs/setup.md). TEST_WORKERS=0 runs them in
# this process, one after the other
TEST_WORKERS ?= auto
PARALLEL = -n $(TEST_WORKERS) --dist loadgroup

test: $(INSTALLED)  ## the whole test suite (CPU; see README "Development" for its time)
	$(PYTHON) -m pytest -q $(PARALLEL) $(TEST_FLAGS)

test-fast: $(INSTALLED)  ## the fast tier for the edit-test loop: every test that starts no process and compiles nothing (tests/conftest.py enforces the marks)
	$(PYTHON) -m pytest -q -m "not slow and not compiles" $(PARALLEL) $(TEST_FLAGS)

bench: $(INSTALLED)  ## TD3+BC and EDAC update and pre-training steps: CORL-style eager vs ours, table to docs/bench.md (BENCH_FLAGS=--quick)
	$(PYTHON) -m benchmarks.bench $(BENCH_FLAGS)

datasets: $(INSTALLED)  ## generate the local D4RL-style datasets (all five levels) for ENVS, e.g. ENVS="Hopper-v5 Walker2d-v5"
	for env in $(ENVS); do $(PYTHON) -m offline_rl.generate --env $$env || exit 1; done

clean-datasets: $(INSTALLED)  ## delete the locally generated datasets (namespace local/ in the Minari folder)
	$(PYTHON) -c "import shutil; from offline_rl.dataset.minari_source import dataset_path; shutil.rmtree(dataset_path('local'), ignore_errors=True)"

mlflow-ui: $(INSTALLED)  ## browse the runs of the store launch.py uses (MLFLOW_TRACKING_URI / OFFLINE_RL_ROOT, else this checkout's) at http://127.0.0.1:5000 (prints the runs-table link; ARGS="tracker.store_dir=..." for another)
	$(PYTHON) -m offline_rl.tracking_ui 5000 $(ARGS)

analysis: $(INSTALLED)  ## the paper's figures and tables for a sweep: make analysis PARENT=<parent run id> OUT=results
	$(PYTHON) -m analysis paper --parent-run-id $(PARENT) --out $(OUT)

# ----- the lent GPU (scripts/device_check.sh, docs/device_check.md) ------------------------------
DEVICE_PYTHON ?= 3.12
DEVICE_WHEELS ?= .whl
.PHONY: device-wheels device-check

device-wheels:  ## wheels the GPU check installs there (no registry there): DEVICE_PYTHON=3.12 into DEVICE_WHEELS=.whl/, size checked
	$(PYTHON) scripts/device_wheels.py --python-version $(DEVICE_PYTHON) --dest $(DEVICE_WHEELS)

device-check:  ## on a machine with a GPU: CUDA tests, make bench on CUDA, runs per GPU; results in OUT (default device_check_out/)
	bash scripts/device_check.sh
