"""The process layer below tasks/, train/ and evaluate/: process group, allocator settings.

Nothing here imports from lmtune.tasks, lmtune.train or lmtune.evaluate, so every one of them
may import from here without a cycle.
"""
