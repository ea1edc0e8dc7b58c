# One setup path on a fresh machine (no ROS install needed): a virtual environment with pinned
# PyTorch, ROS 2 (kilted) from PyPI wheels, and this project in editable mode.
#   make test   set up, lint (ruff), then the whole test suite with the type check (mypy) and the
#               ROS-facing tests on Jazzy (the ros_api selection) beside it
#   make test-jazzy  the ROS-facing tests again on a second distribution (Jazzy, .venv-jazzy)
#   make lint   ruff, then mypy (mypy.ini) over sfnet_core and sfnet_ros
#   make demo   set up, then run the end-to-end demo (synthetic bag -> train -> node -> metrics)
#   make bench  set up, then run the benchmarks (model table, speed ratios, node latency)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sfnet-installed
TORCH := torch==2.14.1 torchvision==0.29.1
UV := uv==0.13.9

# The second distribution: ROS 2 Jazzy's wheels (requirements-jazzy.txt) in .venv-jazzy beside
# .venv, every other package at requirements.txt's pins; the ROS-facing tests run there too.
JAZZY_VENV ?= .venv-jazzy
JAZZY_PY := $(JAZZY_VENV)/bin/python
JAZZY_STAMP := $(JAZZY_VENV)/.sfnet-installed
# What differs between distributions: messages, QoS events, lifecycle and parameter services, Fast
# DDS 2 against 3 (the profile variable), discovery settings; test/test_ros_distro.py checks that
# every test file starting a node or a ROS tool is here or named there as distribution-independent.
JAZZY_TESTS := test/test_node.py test/test_node_lifecycle.py test/test_node_faults.py test/test_node_geometry.py \
	test/test_node_multi.py test/test_node_loss.py test/test_node_messages.py test/test_bag_live.py \
	test/test_bag_play_wait.py test/test_status.py test/test_transport.py test/test_ros_distro.py \
	test/test_conversions.py test/test_frame_pipeline.py
# What those tests import besides ROS (at requirements.txt's pins): not ray, the labelling tools' or lint's packages.
JAZZY_PACKAGES := numpy opencv-python-headless PyYAML tqdm onnx onnxruntime openvino openvino-telemetry \
	cityscapesscripts rosbags pytest pytest-timeout pytest-xdist execnet

.PHONY: setup setup-jazzy lint test test-jazzy demo bench model-stats clean

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

setup-jazzy: $(JAZZY_STAMP)

$(JAZZY_STAMP): $(STAMP) requirements-jazzy.txt
	test -x $(JAZZY_PY) || $(PYTHON) -m venv $(JAZZY_VENV)
	grep -v '^ros-' requirements.txt > $(JAZZY_VENV)/constraints.txt
	@# uv links the packages from its cache; pip where uv is missing or fails
	if test -x $(VENV)/bin/uv && $(VENV)/bin/uv pip install --python $(JAZZY_PY) --quiet \
	    --index-strategy unsafe-best-match $$($(PY) .ci/uv_sources.py) -c $(JAZZY_VENV)/constraints.txt \
	    $(TORCH) $(JAZZY_PACKAGES) -r requirements-jazzy.txt; then :; else \
	    $(JAZZY_PY) -m pip install --quiet -c $(JAZZY_VENV)/constraints.txt $(TORCH) $(JAZZY_PACKAGES) \
	    -r requirements-jazzy.txt; fi
	$(JAZZY_PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(JAZZY_STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Two pytest-xdist workers (a third, tried, made the suite slower on the 2-core CI machine), one
# test file each at a time (a file's module fixtures, e.g. its node process, stay in one worker), the longest files first
# (test/conftest.py: SLOW_FIRST); each worker has its own ROS domain ids. The slowest tests are
# listed at the end (--durations), to keep the suite's time in view.
TEST_WORKERS ?= 2

# The ROS-facing tests on Jazzy: .venv-jazzy is installed without byte-compiling (half the time);
# its pytest may write .pyc files (even where PYTHONDONTWRITEBYTECODE is set), so the first process
# that imports a module compiles it for the others. torch.compile is the same on both distributions.
# SFNET_TEST_DOMAINS (test/conftest.py) keeps it off the ROS domains of a Kilted run beside it.
JAZZY_PYTEST = env -u PYTHONDONTWRITEBYTECODE $(JAZZY_PY) -m pytest $(JAZZY_TESTS) --dist loadfile \
	--no-loadscope-reorder -p no:cacheprovider \
	--deselect test/test_node_lifecycle.py::test_compile_parameter_serves_the_same_labels

# JAZZY_SELECT="-m ros_api": only the tests of what differs between distributions (pytest.ini).
JAZZY_SELECT ?=
test-jazzy: setup-jazzy
	SFNET_TEST_DOMAINS=67-100 $(JAZZY_PYTEST) -n $(TEST_WORKERS) $(JAZZY_SELECT)

# The type check runs beside the tests (its half minute fits in the workers' waits on processes
# and DDS), with its cache in the user's cache folder, so a fresh clone's check is incremental
# (28 s -> 1 s here). Jazzy runs beside them too: .venv-jazzy is built and the tests marked
# ros_api (pytest.ini: what differs between distributions, and one end-to-end test per group) run
# in one process at nice 10, on their own ROS domains, so they take the cores the Kilted workers
# leave idle while they wait on nodes. make test fails if any of the three fails, and prints the
# Jazzy and mypy summaries after the Kilted report; make test-jazzy runs every ROS-facing test there.
# The Jazzy process is started with a literal `make` (not $(MAKE)): a sub-make of its own, so that
# its output goes to its log and not through this make's job server.
MYPY_CACHE ?= $${XDG_CACHE_HOME:-$$HOME/.cache}/sfnet_ros/mypy
test:
	@# the fleet report's browser test needs Chromium: Debian's headless shell, installed as root (26 s
	@# once, on a fresh machine), beside the venv's set-up (apt and uv both wait mostly on the network
	@# and the disk); elsewhere that test skips and says why
	@bash .ci/install_browser.sh & browser=$$!; $(MAKE) --no-print-directory setup; set_up=$$?; \
	wait $$browser; exit $$set_up
	$(VENV)/bin/ruff check .
	@# Byte-compiled once here: where PYTHONDONTWRITEBYTECODE is set (CI), each of the suite's
	@# hundreds of tool and node processes would otherwise compile our sources again (0.1-0.3 s each).
	$(PY) -m compileall -q sfnet_core sfnet_ros bench
	@typed_log=$$(mktemp); jazzy_log=$$(mktemp); \
	$(VENV)/bin/mypy --cache-dir "$(MYPY_CACHE)" > $$typed_log 2>&1 & typed=$$!; \
	{ nice -n 10 make --no-print-directory setup-jazzy && \
	  SFNET_TEST_DOMAINS=67-100 nice -n 10 $(JAZZY_PYTEST) -m ros_api -q; } > $$jazzy_log 2>&1 & jazzy=$$!; \
	SFNET_TEST_DOMAINS=1-66 $(PY) -m pytest test -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	    --durations=25; tests=$$?; \
	wait $$jazzy; jazzy_tests=$$?; echo "Jazzy (make test-jazzy runs all): $$(tail -n 1 $$jazzy_log)"; \
	if [ $$jazzy_tests -ne 0 ]; then cat $$jazzy_log; fi; rm -f $$jazzy_log; \
	wait $$typed; types=$$?; echo "mypy: $$(tail -n 1 $$typed_log)"; \
	if [ $$types -ne 0 ]; then cat $$typed_log; fi; rm -f $$typed_log; \
	test $$tests -eq 0 -a $$jazzy_tests -eq 0 -a $$types -eq 0

demo: setup
	$(VENV)/bin/sfnet-demo --overwrite

model-stats: setup
	$(PY) bench/model_stats.py

bench: setup
	$(PY) bench/model_stats.py
	$(PY) bench/speed.py
	$(PY) bench/node_latency.py

clean:
	rm -rf $(VENV) $(JAZZY_VENV) build *.egg-info
