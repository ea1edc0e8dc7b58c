# One setup path on a fresh machine (no ROS install needed): a virtual environment with pinned
# PyTorch, ROS 2 (kilted) from PyPI wheels, and this project in editable mode.
#   make test   set up, lint (ruff), then the whole test suite with the type check (mypy) beside it
#   make lint   ruff, then mypy (mypy.ini) over sfnet_core and sfnet_ros
#   make demo   set up, then run the end-to-end demo (synthetic bag -> train -> node -> metrics)
#   make bench  set up, then run the benchmarks (model table, speed ratios, node latency)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sfnet-installed
TORCH := torch==2.14.1 torchvision==0.29.1
UV := uv==0.13.9

.PHONY: setup lint test demo bench model-stats clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs the same pins from the sources pip is configured with (.ci/uv_sources.py) in
	@# 24-40 s where pip takes 125 s on the CI machine; where uv cannot be had or fails, pip does it.
	if $(PY) -m pip install --quiet $(UV) && $(VENV)/bin/uv pip install --python $(PY) --quiet \
	    --compile-bytecode --index-strategy unsafe-best-match $$($(PY) .ci/uv_sources.py) \
	    $(TORCH) -r requirements.txt && $(VENV)/bin/uv pip install --python $(PY) --quiet --compile-bytecode \
	    --no-deps $$($(PY) .ci/uv_sources.py) -r requirements-nodeps.txt; then :; else \
	    $(PY) -m pip install --quiet $(TORCH) -r requirements.txt && \
	    $(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt; fi
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Two pytest-xdist workers (a third, tried, made the suite slower on the 2-core CI machine), one
# test file each at a time (a file's module fixtures, e.g. its node process, stay in one worker), the longest files first
# (test/conftest.py: SLOW_FIRST); each worker has its own ROS domain ids. The slowest tests are
# listed at the end (--durations), to keep the suite's time in view.
TEST_WORKERS ?= 2

# The type check runs beside the tests (its half minute fits in the workers' waits on processes
# and DDS); make test fails if either fails, and prints mypy's report after the tests.
test: setup
	$(VENV)/bin/ruff check .
	@# the fleet report's browser test needs Chromium: Debian's headless shell, installed as root (26 s
	@# once); elsewhere that test skips and says why
	bash .ci/install_browser.sh
	@# Byte-compiled once here: where PYTHONDONTWRITEBYTECODE is set (CI), each of the suite's
	@# hundreds of tool and node processes would otherwise compile our sources again (0.1-0.3 s each).
	$(PY) -m compileall -q sfnet_core sfnet_ros bench
	@typed_log=$$(mktemp); $(VENV)/bin/mypy > $$typed_log 2>&1 & typed=$$!; \
	$(PY) -m pytest test -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25; tests=$$?; \
	wait $$typed; types=$$?; echo "mypy: $$(tail -n 1 $$typed_log)"; \
	if [ $$types -ne 0 ]; then cat $$typed_log; fi; rm -f $$typed_log; \
	test $$tests -eq 0 -a $$types -eq 0

demo: setup
	$(VENV)/bin/sfnet-demo --overwrite

model-stats: setup
	$(PY) bench/model_stats.py

bench: setup
	$(PY) bench/model_stats.py
	$(PY) bench/speed.py
	$(PY) bench/node_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
