# Targets a researcher uses. PYTHON can point at a venv: make test PYTHON=.venv/bin/python
PYTHON ?= python
ENVS ?= Hopper-v5
BENCH_FLAGS ?=

.PHONY: install run test bench datasets clean-datasets mlflow-ui analysis

install:  ## install the CPU torch wheel, then this package with its dev and Adroit extras
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[dev,adroit]'

run:  ## the README's main job: TD3+BC on the locally generated Hopper medium dataset
	$(PYTHON) launch.py algo=td3_bc dataset=hopper-medium-local updates=30000 eval.every=5000

test:  ## the whole test suite (CPU, a few minutes)
	$(PYTHON) -m pytest -q

bench:  ## TD3+BC and EDAC update and pre-training steps: CORL-style eager vs ours, table to docs/bench.md (BENCH_FLAGS=--quick)
	$(PYTHON) -m offline_rl.bench $(BENCH_FLAGS)

datasets:  ## generate the local D4RL-style datasets (medium, medium-replay, expert) for ENVS
	for env in $(ENVS); do $(PYTHON) -m offline_rl.dataset.generate --env $$env || exit 1; done

clean-datasets:  ## delete the locally generated datasets (namespace local/ in the Minari folder)
	$(PYTHON) -c "import shutil; from offline_rl.dataset.minari_source import dataset_path; shutil.rmtree(dataset_path('local'), ignore_errors=True)"

mlflow-ui:  ## browse runs of this checkout's store at http://127.0.0.1:5000
	$(PYTHON) -m mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

analysis:  ## the paper's figures and tables for a sweep: make analysis PARENT=<parent run id> OUT=results
	$(PYTHON) -m analysis paper --parent-run-id $(PARENT) --out $(OUT)

# ----- the lent GPU (scripts/device_check.sh, docs/device_check.md) ------------------------------
DEVICE_PYTHON ?= 3.12
DEVICE_WHEELS ?= .whl
.PHONY: device-wheels device-check

device-wheels:  ## wheels the GPU check installs there (no registry there): DEVICE_PYTHON=3.12 into DEVICE_WHEELS=.whl/, size checked
	$(PYTHON) scripts/device_wheels.py --python-version $(DEVICE_PYTHON) --dest $(DEVICE_WHEELS)

device-check:  ## on a machine with a GPU: CUDA tests, make bench on CUDA, runs per GPU; results in OUT (default device_check_out/)
	bash scripts/device_check.sh
