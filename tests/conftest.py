"""Shared test setup: make `lmtune` (src layout) and the helpers in tests/ importable.

The helpers live in tests/tiny.py (tiny seeded models and tokenizers); tests import them
with `from tiny import make_tokenizer, ...`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"

# Prepend so the working tree wins over any installed copy of lmtune.
for path in (str(SRC), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)

# rich wraps CLI output at 80 columns when there is no terminal; tests look for paths under
# tmp_path (longer under pytest-xdist) in that output, so give it room. Set before lmtune.cli
# creates its consoles; subprocesses inherit it.
os.environ.setdefault("COLUMNS", "250")

# The data cache (lmtune.data.cache) of a test session lives in a fresh temporary folder:
# never the user's ~/.cache, and no hit from an earlier session. Subprocesses inherit it.
if "LMTUNE_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["LMTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmtune-test-cache-")

# Tests run tiny models, where thread start-up and spin-waits dominate: on a busy 2-core box
# one thread made the packing tests ~50x faster. OMP_NUM_THREADS, when set, wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)
# Likewise the Rust tokenizer's thread pool, which a batched tokenizer call starts: two test
# workers already fill the two cores (subprocesses inherit it).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    """Same random stream in every test, whatever ran before it."""
    torch.manual_seed(0)
