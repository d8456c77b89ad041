"""Allocator settings for the hot loops (steady_malloc).

Interim: re-exports train/loop.py's steady_malloc until it moves here.
"""

from __future__ import annotations

from lmtune.train.loop import steady_malloc

__all__ = ["steady_malloc"]
