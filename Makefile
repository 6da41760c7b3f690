# The two commands a new user runs: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CAPTIONER ?= Salesforce/blip-image-captioning-base
TRANSLATOR ?= facebook/mbart-large-50-many-to-many-mmt
PYTEST_ARGS ?=
CHECKOV := $(VENV)/tools/checkov/bin/checkov --config-file deploy/.checkov.yaml

.PHONY: install demo test serve ui lint format configs clean

install: $(STAMP)

# torch is installed first and pinned, so pip takes the local CPU wheel and nothing pulls CUDA builds.
$(STAMP): pyproject.toml scripts/install-system-deps.sh scripts/install-perf-analyzer.sh scripts/install-checkov.sh
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel "setuptools>=69"
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	VENV=$(VENV) bash scripts/install-perf-analyzer.sh
	VENV=$(VENV) bash scripts/install-checkov.sh
	touch $@

demo: install
	$(BIN)/captioning demo --captioner "$(CAPTIONER)" --translator "$(TRANSLATOR)"

# The web page with its own server (demo repository); Ctrl-C stops both. UI_PORT=7860 by default.
ui: install
	$(BIN)/captioning ui --serve --captioner "$(CAPTIONER)" --translator "$(TRANSLATOR)" --port $(or $(UI_PORT),7860)

serve: install
	$(BIN)/captioning serve --captioner "$(CAPTIONER)" --translator "$(TRANSLATOR)"

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/python scripts/lint_imports.py
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.cpu docker/Dockerfile.train
	$(BIN)/bandit -q -c pyproject.toml -r captioning export client training model_repository -ll
	mkdir -p build/k8s && for o in cpu gpu gpu-s3; do kubectl kustomize deploy/k8s/overlays/$$o > build/k8s/$$o.yaml || exit 1; done
	kubectl kustomize deploy/k8s/training > build/k8s/training.yaml
	$(CHECKOV) --framework kubernetes -f build/k8s/cpu.yaml -f build/k8s/gpu.yaml -f build/k8s/gpu-s3.yaml -f build/k8s/training.yaml
	$(CHECKOV) --framework dockerfile -f docker/Dockerfile -f docker/Dockerfile.cpu -f docker/Dockerfile.train

# model_repository/*/config.pbtxt from the typed specs, after a spec changed (a test fails until then).
configs: install
	$(BIN)/python -m captioning.export.source_tree model_repository

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf build .cache .pytest_cache
