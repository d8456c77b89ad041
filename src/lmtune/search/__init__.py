"""Hyperparameter search (`lmtune tune`): Optuna studies over any config key."""
