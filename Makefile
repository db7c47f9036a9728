# Shortcuts for the usual commands; scripts/ and .ci/run hold the real logic.
PYTHON ?= .venv/bin/python
HELM ?= .tools/bin/helm
RUFF ?= .venv/bin/ruff
HADOLINT ?= .venv/bin/hadolint

.PHONY: test lint e2e manifests tools

test:  ## the README's test suite (the kind e2e tests skip themselves here)
	$(PYTHON) -m pytest

lint: tools  ## ruff, hadolint and helm lint
	$(RUFF) check .
	$(RUFF) format --check .
	$(HADOLINT) Dockerfile
	$(HELM) lint --strict charts/llmi

e2e: tools  ## kind end-to-end suite: needs Docker (running) and kind
	$(PYTHON) -m pytest tests/e2e -m e2e -v

manifests: tools  ## manifests/llmi.yaml from the chart's default values
	scripts/render-manifests.sh

tools:  ## helm and kubectl into .tools/bin
	scripts/fetch-helm.sh
