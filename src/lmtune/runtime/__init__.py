"""The process layer below tasks, train and evaluate: strategies, checkpoints, launching."""
