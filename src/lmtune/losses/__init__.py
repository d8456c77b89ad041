"""Pure loss functions: tensors in, per-example losses out, no model and no state.

Each is small enough to check against a hand computation, and tests/unit/test_losses*.py
also check them against TRL. Tasks (src/lmtune/tasks) run the model and call these.
"""
