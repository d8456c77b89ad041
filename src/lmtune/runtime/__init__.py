"""The process layer below tasks/, train/ and evaluate/: process group, allocator settings,
strategies (DDP, FSDP2), sharded checkpoints, launching, the memory planner.

Nothing here imports from lmtune.tasks, lmtune.train or lmtune.evaluate, so every one of them
may import from here without a cycle.
"""
