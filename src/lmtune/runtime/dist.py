"""The process group (rank, world size, device, collectives) for every layer above runtime/.

Interim: re-exports train/dist.py until the process layer moves here.
"""

from __future__ import annotations

from lmtune.train.dist import Dist

__all__ = ["Dist"]
