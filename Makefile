# Quick start: `make up` runs the embedded network; `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: up test install lint clean gpu-check system-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	@test -x $(PY) || uv venv -q -p python3.11 $(VENV)
	uv pip install -q -p $(PY) -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

up: install
	$(VENV)/bin/gpgpu up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy domain workflows activities api worker_gpu infra client bench

system-deps:
	bash scripts/system-deps.sh

test: install lint system-deps
	$(VENV)/bin/pytest -q -p no:cacheprovider

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf .gpgpu test-artifacts
