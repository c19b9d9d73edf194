# The README's two commands: `make demo` and `make test`. Both run `setup` first.
# `make bench BENCH_ARGS=--data_1m` adds the 1M-conversation data-path rows (minutes).
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
# Second environment with the official stack (transformers 4.33.3), for the tests that load our outputs there.
OFFICIAL_STAMP := .venv-official/.installed
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# Offline by design: nothing is fetched from a model hub at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup official demo test lint format bench test-multinode clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -U pip
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# torch comes from the same local CPU wheel as .venv's (pip's configured find-links), never a CUDA build.
official: $(OFFICIAL_STAMP)

$(OFFICIAL_STAMP): requirements-official.txt
	test -x .venv-official/bin/python || python3 -m venv .venv-official
	.venv-official/bin/pip install -q -r requirements-official.txt
	touch $(OFFICIAL_STAMP)

demo: setup
	bash scripts/demo.sh

# The page test drives Debian's headless Chromium: installed here when missing (as root; it skips otherwise).
test: setup official
	bash tests/browser/install.sh
	$(PY) -m pytest -q --durations=10

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench: setup
	$(PY) -m benchmarks.bench $(BENCH_ARGS)

test-multinode: setup
	bash tests/multinode/run.sh

clean:
	rm -rf output .cache
