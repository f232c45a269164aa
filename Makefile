# Quick start: `make up` runs the embedded network; `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: up test install lint clean gpu-check system-deps sandbox-deps web

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	@test -x $(PY) || uv venv -q -p python3.11 $(VENV)
	uv pip install -q -p $(PY) -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

up: install web sandbox-deps
	$(VENV)/bin/gpgpu up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy protocol domain readmodel workflows activities api worker_gpu infra client ops bench

system-deps:
	bash scripts/system-deps.sh

# bubblewrap: the provider agents run every job in its sandbox.
sandbox-deps:
	@bash scripts/system-deps.sh sandbox

# pytest on TEST_WORKERS xdist workers, each with its own servers (tests/conftest.py says how
# the tests are spread: a module's tests together, the S3 ones on one worker, the slowest
# directories first); TEST_WORKERS=0 runs them all in this process. Exit status 5 (no
# test collected) fails the target like any other failure. 6 workers on 2 cores: the
# end-to-end modules mostly wait (tests/e2e, liveness, adversarial took 205 s on 4, 159 s
# on 6). On 6, tests/reliability/test_kill_restart.py once lost runs of providers it had not
# killed: an API killed between keeping a result and handing it to Temporal (fixed:
# api/assignments.py, a report tried again is delivered again).
TEST_WORKERS ?= 6

test: install lint system-deps web
	$(VENV)/bin/pytest -q -rs -p no:cacheprovider --durations=15 -n $(TEST_WORKERS) --dist loadscope

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf .gpgpu test-artifacts .pycache

# The web UI (web/): `npm ci` only when the lock file changed (node_modules is kept between
# runs), `npm run build` (tsc --noEmit, then vite) only when a source changed; the API
# serves web/dist at /. Without npm: say so and go on (the API serves a plain page).
WEB_DEPS := web/node_modules/.installed-$(shell cksum < web/package-lock.json | cut -d' ' -f1)
WEB_SRC := $(shell find web/src -type f) web/index.html web/package.json web/tsconfig.json web/vite.config.ts

web:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory web/dist/index.html; \
	else echo "web: npm is missing, so the web UI is not built (the API serves a plain page at /)." \
	  "Install Node.js 20+ with npm, then run make web; the browser tests skip until then." >&2; fi

$(WEB_DEPS): web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

web/dist/index.html: $(WEB_DEPS) $(WEB_SRC)
	cd web && npm run --silent build
